"""Presenting a :class:`~boneage.estimate.BoneAgeResult`: overlay, charts, printable report.

Knows nothing of how the result was computed. The app and the CLI call these; the DICOM
exports (Structured Report, Secondary Capture) live in :mod:`boneage.dicom_export`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from typing import Any

import numpy as np

from boneage import anatomy
from boneage.estimate import BoneAgeResult
from boneage.references import OutOfReferenceRange, brush_sd, brush_sd_range
from boneage.result import METHOD_NAMES, MethodComparison, MethodEstimate

DISCLAIMER = (
    "Research software, not a medical device. Estimates must be reviewed by a qualified reader. "
    "Models trained on RSNA Pediatric Bone Age Challenge films (research use only)."
)


# ---------------------------------------------------------------------------------------------
# Words for a reader
# ---------------------------------------------------------------------------------------------
def method_label(method: str) -> str:
    """``"perbone"`` -> ``"Per-bone"``: a method's name as a heading."""
    name = METHOD_NAMES.get(method, method)
    return name[:1].upper() + name[1:]


def _comparisons(result: BoneAgeResult) -> list[MethodComparison]:
    """The result's pairs; a result holding only the multi-step/end-to-end difference (made
    before there were three methods) reads as that one pair."""
    if result.comparisons:
        return [c if isinstance(c, MethodComparison) else MethodComparison(**c) for c in result.comparisons]
    if result.difference_months is None or result.agreement == "n/a":
        return []
    return [MethodComparison("multistep", "direct", result.difference_months, result.agreement)]


def _pair_difference(c: MethodComparison) -> str:
    return f"{METHOD_NAMES[c.second]} {c.difference_months:+.0f} months against {METHOD_NAMES[c.first]}"


def agreement_text(result: BoneAgeResult) -> tuple[str, str]:
    """How the methods' estimates relate, in words for a reader (the decision is the result's own
    ``agreement`` over every pair of methods, made in :mod:`boneage.estimate`).

    Args:
        result: a finished result.

    Returns:
        ``(kind, sentence)``; kind is ``"disagree"`` (some pair), ``"wide"`` (allowed by the
        intervals but large, or allowed only by a wide interval), ``"agree"`` or ``"n/a"``
        (fewer than two estimates).
    """
    pairs = _comparisons(result)
    if result.agreement == "n/a" or not pairs:
        return "n/a", "Only one estimate is available: no comparison."
    largest = max(pairs, key=lambda c: abs(c.difference_months))
    if result.agreement == "disagree":
        apart = "; ".join(f"{method_label(c.first)} and {METHOD_NAMES[c.second]} disagree by "
                          f"{abs(c.difference_months):.0f} months" for c in pairs if c.verdict == "disagree")
        combined = " The combined estimate does not settle that disagreement." if result.combined.available else ""
        return "disagree", f"{apart} — more than their intervals allow.{combined} Review the film."
    if result.agreement != "agree":
        return "wide", (f"The methods differ by up to {abs(largest.difference_months):.0f} months "
                        f"({_pair_difference(largest)}); their intervals are wide enough to allow it, "
                        "so neither confirms the other. Review the film.")
    if len(pairs) == 1:
        return "agree", f"Methods agree ({_pair_difference(largest)}, within their intervals)."
    return "agree", (f"All three methods agree (largest difference: {_pair_difference(largest)}, "
                     "within their intervals).")


# ---------------------------------------------------------------------------------------------
# Colours and overlay
# ---------------------------------------------------------------------------------------------
def label_colours() -> np.ndarray:
    """RGB colour (uint8) for every label id; background black. Shaft and epiphysis of a bone
    share a hue, the epiphysis lighter, so a bone reads as one object with a visible cap."""
    import colorsys

    colours = np.zeros((anatomy.NUM_CLASSES, 3), np.uint8)
    for i, bone in enumerate(anatomy.BONES):
        hue = (i * 0.618033988749895) % 1.0  # golden-ratio hues: neighbours differ
        for label in anatomy.bone_labels(bone):
            part = anatomy.structure(label).part
            light = 0.70 if part == "epiphysis" else 0.50
            r, g, b = colorsys.hls_to_rgb(hue, light, 0.85)
            colours[label] = (int(r * 255), int(g * 255), int(b * 255))
    return colours


#: Months between a bone's own age and the combined estimate at which its colour is fully blue
#: (younger) or red (older); smaller differences fade towards a light neutral grey.
MATURITY_FULL_SCALE_MONTHS = 24.0
_YOUNGER_RGB = np.array([40.0, 90.0, 230.0])
_NEUTRAL_RGB = np.array([235.0, 235.0, 235.0])
_OLDER_RGB = np.array([220.0, 30.0, 30.0])


def maturity_colour(difference_months: float, full_scale_months: float = MATURITY_FULL_SCALE_MONTHS) -> tuple[int, int, int]:
    """The colour of a bone ``difference_months`` older (positive) or younger (negative) than
    the estimate it is compared with: blue for younger, red for older, light grey for the same.

    Args:
        difference_months: bone's own age minus the reference age.
        full_scale_months: the difference shown at full colour.

    Returns:
        ``(r, g, b)`` in 0-255.
    """
    t = float(np.clip(difference_months / full_scale_months, -1.0, 1.0))
    end = _OLDER_RGB if t > 0 else _YOUNGER_RGB
    r, g, b = np.round(_NEUTRAL_RGB + abs(t) * (end - _NEUTRAL_RGB)).astype(int)
    return int(r), int(g), int(b)


def maturity_reference(result: BoneAgeResult) -> MethodEstimate | None:
    """The estimate each bone's own age is compared with: the combined one, else the per-bone
    consensus (``None`` when neither is available)."""
    for est in (result.combined, result.perbone):
        if est.available:
            return est
    return None


def bone_own_ages(result: BoneAgeResult) -> dict[str, float]:
    """Each aged region's own age (per-bone method): RUS bones from ``result.bones``, the carpus
    (``anatomy.CARPAL_REGION``) from ``result.perbone_carpal``."""
    ages = {b["bone"]: float(b["maturity_age_months"]) for b in result.bones
            if b.get("maturity_age_months") is not None}
    if result.perbone_carpal.available:
        ages[anatomy.CARPAL_REGION] = float(result.perbone_carpal.age_months)  # type: ignore[arg-type]
    return ages


def _region_bones(region: str) -> tuple[str, ...]:
    return anatomy.CARPALS if region == anatomy.CARPAL_REGION else (region,)


def maturity_colours(result: BoneAgeResult, full_scale_months: float = MATURITY_FULL_SCALE_MONTHS) -> np.ndarray | None:
    """Overlay colours by each bone's own age against the combined estimate (see :func:`maturity_colour`).

    Args:
        result: a result with per-bone ages.
        full_scale_months: the difference shown at full colour.

    Returns:
        ``(NUM_CLASSES, 4)`` uint8 RGBA per label id for :func:`overlay_rgb`: alpha 255 for the
        labels of an aged bone (every carpal for the carpal region), 0 for the rest (left
        unpainted); ``None`` when there is no per-bone age or nothing to compare it with.
    """
    reference = maturity_reference(result)
    ages = bone_own_ages(result)
    if reference is None or not ages:
        return None
    table = np.zeros((anatomy.NUM_CLASSES, 4), np.uint8)
    for region, age in ages.items():
        colour = maturity_colour(age - float(reference.age_months), full_scale_months)  # type: ignore[arg-type]
        for bone in _region_bones(region):
            for label in anatomy.bone_labels(bone):
                table[label] = (*colour, 255)
    return table


def maturity_legend_rows(result: BoneAgeResult, full_scale_months: float = MATURITY_FULL_SCALE_MONTHS) -> list[dict[str, str]]:
    """The aged bones with their own age, its difference from the reference and their colour (hex)."""
    reference = maturity_reference(result)
    if reference is None:
        return []
    rows = []
    for region, age in bone_own_ages(result).items():
        diff = age - float(reference.age_months)  # type: ignore[arg-type]
        r, g, b = maturity_colour(diff, full_scale_months)
        rows.append({"bone": anatomy.display_name(region), "own age": years_months(age),
                     f"vs {METHOD_NAMES[reference.method]} (months)": f"{diff:+.0f}", "colour": f"#{r:02x}{g:02x}{b:02x}"})
    return rows


def overlay_rgb(pixels: np.ndarray, label_map: np.ndarray | None, opacity: float = 0.45,
                colours: np.ndarray | None = None) -> np.ndarray:
    """Blend a label map over a radiograph.

    Args:
        pixels: 2-D float image in [0, 1] (bone bright).
        label_map: same-shape label ids, or ``None`` for the plain image.
        opacity: 0 (image only) to 1 (labels only) where a bone is labelled.
        colours: uint8 colour per label id, ``(NUM_CLASSES, 3)`` or RGBA ``(NUM_CLASSES, 4)``
            (labels with alpha 0 are left unpainted, e.g. :func:`maturity_colours`); default
            :func:`label_colours`.

    Returns:
        ``(rows, cols, 3)`` uint8 RGB image.
    """
    gray = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if label_map is not None and opacity > 0:
        labels = np.asarray(label_map)
        if labels.shape != gray.shape:
            raise ValueError(f"label map shape {labels.shape} differs from the image {gray.shape}")
        table = label_colours() if colours is None else np.asarray(colours)
        painted = table[:, 3] > 0 if table.shape[1] == 4 else np.ones(len(table), bool)
        lab = np.clip(labels, 0, anatomy.NUM_CLASSES - 1)
        mask = (labels > 0) & painted[lab]
        rgb[mask] = (1 - opacity) * rgb[mask] + opacity * table[lab[mask], :3].astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def png_bytes(rgb_or_gray: np.ndarray) -> bytes:
    """Encode an image array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb_or_gray).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def legend_rows(label_map: np.ndarray | None) -> list[dict[str, str]]:
    """Bones present in a label map with their overlay colour (hex), in anatomical order."""
    if label_map is None:
        return []
    present = set(np.unique(label_map).tolist())
    colours = label_colours()
    rows = []
    for bone in anatomy.BONES:
        ids = [i for i in anatomy.bone_labels(bone) if i in present]
        if ids:
            r, g, b = colours[anatomy.bone_labels(bone)[0]]
            rows.append({"bone": anatomy.display_name(bone), "colour": f"#{r:02x}{g:02x}{b:02x}"})
    return rows


def figure_overlay(pixels: np.ndarray, label_map: np.ndarray | None, opacity: float = 0.45,
                   hover_long_side: int = 256, colours: np.ndarray | None = None) -> Any:
    """Zoomable plotly figure of the full-resolution radiograph with the bone overlay.

    Hovering shows the bone under the cursor (from a downsampled copy of the label map, so the
    page stays light). ``colours`` as in :func:`overlay_rgb` (e.g. :func:`maturity_colours`).
    """
    import plotly.graph_objects as go

    rgb = overlay_rgb(pixels, label_map, opacity, colours)
    rows, cols = pixels.shape
    source = "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode()
    fig = go.Figure(go.Image(source=source, hoverinfo="skip"))
    if label_map is not None:
        step = max(1, int(math.ceil(max(rows, cols) / hover_long_side)))
        small = np.asarray(label_map)[::step, ::step]
        names = np.array([""] + [anatomy.display_name(s.name.replace("_shaft", "") if s.part == "shaft" else s.name)
                                 for s in anatomy.STRUCTURES], dtype=object)
        text = names[np.clip(small, 0, anatomy.NUM_CLASSES - 1)]
        fig.add_trace(go.Heatmap(
            z=(small > 0).astype(float), x0=0, dx=step, y0=0, dy=step, text=text, opacity=0.0,
            showscale=False, hovertemplate="%{text}<extra></extra>",
        ))
    fig.update_layout(margin=dict(l=0, r=0, t=0, b=0), dragmode="pan", height=720,
                      xaxis=dict(visible=False, range=[0, cols]), yaxis=dict(visible=False, range=[rows, 0], scaleanchor="x"))
    return fig


#: Marker colour and symbol of each estimate on the bone-age chart (the combined one stands out).
CHART_MARKERS = {"combined": ("#111111", "diamond", 15), "multistep": ("#d62728", "circle", 11),
                 "perbone": ("#9467bd", "circle", 11), "direct": ("#2ca02c", "circle", 11)}


def figure_bone_age_chart(result: BoneAgeResult) -> Any:
    """Bone age against chronological age with the Brush Foundation +-1 and +-2 SD bands, and
    the patient's estimates: combined, multi-step, per-bone, end-to-end (needs sex;
    chronological age places the points)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    sex = result.sex
    if sex in ("M", "F"):
        lo, hi = brush_sd_range(sex)
        ca = np.linspace(lo, hi, 120)
        sd = np.array([brush_sd(a, sex) for a in ca])
        for k, shade in ((2, "rgba(80,120,200,0.12)"), (1, "rgba(80,120,200,0.22)")):
            fig.add_trace(go.Scatter(x=np.r_[ca, ca[::-1]] / 12, y=np.r_[ca + k * sd, (ca - k * sd)[::-1]] / 12,
                                     fill="toself", fillcolor=shade, line=dict(width=0), hoverinfo="skip",
                                     name=f"+-{k} SD (Brush, {'boys' if sex == 'M' else 'girls'})"))
        fig.add_trace(go.Scatter(x=ca / 12, y=ca / 12, mode="lines", line=dict(color="rgb(60,90,170)"),
                                 name="bone age = age"))
    x = result.chronological_age_months
    for est in (result.combined, result.multistep, result.perbone, result.direct):
        if est.available and x is not None:
            colour, symbol, size = CHART_MARKERS[est.method]
            fig.add_trace(go.Scatter(
                x=[x / 12], y=[est.age_months / 12], mode="markers", marker=dict(size=size, color=colour, symbol=symbol),
                error_y=dict(type="data", symmetric=False, array=[(est.upper_90 - est.age_months) / 12],
                             arrayminus=[(est.age_months - est.lower_90) / 12]),
                name=f"{method_label(est.method)} (90% interval)"))
    fig.update_layout(xaxis_title="chronological age (years)", yaxis_title="bone age (years)", height=420,
                      margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=-0.2))
    return fig


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------
def years_months(months: float | None) -> str:
    """``126.4`` -> ``"10 y 6 mo"``; ``None`` -> ``"-"``."""
    if months is None or not math.isfinite(months):
        return "-"
    m = int(round(months))
    return f"{m // 12} y {m % 12} mo"


def estimate_text(est) -> str:
    """``"10 y 6 mo (90%: 9 y 2 mo - 11 y 10 mo)"`` or why the method is unavailable."""
    if not est.available:
        return est.note or "not available"
    return f"{years_months(est.age_months)} (90%: {years_months(est.lower_90)} - {years_months(est.upper_90)})"


def bone_table_rows(result: BoneAgeResult) -> list[dict[str, Any]]:
    """The per-bone table as display rows (bones not seen at all are left out): the multi-step
    measurements when that method ran, each bone's own age when the per-bone method did."""
    measured = any("feature" in b for b in result.bones)
    aged = any(b.get("maturity_age_months") is not None for b in result.bones)
    rows = []
    for b in result.bones:
        if not b["present"]:
            continue
        row: dict[str, Any] = {"bone": anatomy.display_name(b["bone"])}
        if measured:
            mean, sd = b.get("reference_mean"), b.get("reference_sd")
            row.update({
                "measurement": (b.get("feature") or "").split(".", 1)[-1].replace("_", " "),
                "value": _num(b.get("value")),
                "reference (mean ± SD)": f"{mean:.3g} ± {sd:.2g}" if mean is not None and sd is not None else "",
                "z-score": _num(b.get("z_score"), 1),
                "implied age": years_months(b.get("implied_age_months")),
            })
        if aged:
            own = b.get("maturity_age_months")
            row.update({
                "own age": years_months(own) if own is not None else "",
                "own age 90%": (f"{years_months(b.get('maturity_lower_90'))} – {years_months(b.get('maturity_upper_90'))}"
                                if own is not None else ""),
                "in consensus": "" if own is None else "yes" if b.get("maturity_used") else "NO: disagrees with the other bones",
            })
        if measured:
            row.update({
                "length (mm)": _num(b.get("length_mm"), 1),
                "length (px)": _num(b.get("length_px"), 0),
                "plausible": "yes" if b.get("plausible") else "NO: " + ", ".join(b.get("flags") or []),
            })
        rows.append(row)
    return rows


def rus_carpal_text(result: BoneAgeResult) -> str:
    """The per-bone method's RUS and carpal ages side by side ("" when it gave neither).

    They are as read: unlike the method's film age, not through its age-band bias map.
    """
    parts = [f"{label}: {estimate_text(est)}" for est, label in ((result.perbone_rus, "RUS bones"),
                                                                  (result.perbone_carpal, "carpal region"))
             if est.available]
    return " · ".join(parts) + " (as read, without the age-band map)" if parts else ""


def _num(v, digits: int = 3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return round(float(v), digits) if digits else int(round(float(v)))


def html_report(result: BoneAgeResult, pixels: np.ndarray | None = None) -> str:
    """A self-contained printable HTML report (images embedded)."""
    e = html.escape
    img = ""
    if pixels is not None:
        rgb = overlay_rgb(pixels, result.label_map, 0.45)
        step = max(1, int(math.ceil(max(rgb.shape[:2]) / 900)))
        img = f'<img alt="radiograph with bone overlay" src="data:image/png;base64,{base64.b64encode(png_bytes(rgb[::step, ::step])).decode()}">'
    sds = []
    for est in (result.combined, result.multistep, result.perbone, result.direct):
        if est.sds is not None:
            sds.append(f"{method_label(est.method)}: {est.sds:+.2f} SD")
    rows = bone_table_rows(result)
    table = ""
    if rows:
        head = "".join(f"<th>{e(k)}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{e('' if v is None else str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
        table = f"<h2>Per-bone measurements and each bone's own age</h2><table><tr>{head}</tr>{body}</table>"
    methods = "".join(f'<div class="box"><b>{e(method_label(est.method))}</b><br>{e(estimate_text(est))}</div>'
                      for est in (result.multistep, result.perbone, result.direct))
    rus_carpal = rus_carpal_text(result)
    rus_carpal = f"<p>Per-bone method, {e(rus_carpal)}</p>" if rus_carpal else ""
    weights = (f"<br><small>{e(result.combined.note)}</small>"
               if result.combined.available and result.combined.note else "")
    status = "" if result.ok else f'<p class="warn"><b>{e(result.status.upper())}</b>: {e(result.reason)}</p>'
    qc = "".join(f"<li>{e(q)}</li>" for q in result.qc)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Bone age report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 6px}}
.box{{display:inline-block;border:1px solid #999;border-radius:6px;padding:8px 14px;margin:4px}}
.headline{{font-size:1.3em;border-width:2px}}
.warn{{color:#a00}}img{{max-width:100%}}@media print{{.noprint{{display:none}}}}</style></head><body>
<h1>Bone age report</h1>
<p>Image: {e(str(result.path))} &middot; generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>
{status}
<p>Sex: {e(result.sex or 'unknown')} ({e(result.sex_source)}) &middot; chronological age:
{e(years_months(result.chronological_age_months))} ({e(result.chronological_age_source)})</p>
<div class="box headline"><b>Combined estimate</b><br>{e(estimate_text(result.combined))}{weights}</div>
<div>{methods}</div>
{rus_carpal}
<p>Agreement: {e(agreement_text(result)[1])}</p>
<p>SDS (Brush Foundation SD): {e('; '.join(sds) or (result.sds_note or '-'))}</p>
{img}
{table}
<h2>Quality control</h2><ul>{qc or '<li>no remarks</li>'}</ul>
<p>Model versions: {e(json.dumps(result.versions))}</p>
<p><small>{e(DISCLAIMER)}</small></p></body></html>"""


def result_json(result: BoneAgeResult) -> str:
    """The full result as pretty JSON (the app's download)."""
    return json.dumps(result.to_dict(), indent=2)


def sds_range_note(sex: str | None) -> str:
    """Which chronological ages the Brush SD covers for a sex, for explanations."""
    try:
        lo, hi = brush_sd_range(sex or "")
    except OutOfReferenceRange:
        return "The Brush SD is sex-specific: give the sex to get an SDS."
    return f"The Brush SD table covers chronological ages {lo:.0f}-{hi:.0f} months."


# ---------------------------------------------------------------------------------------------
# Display copies
# ---------------------------------------------------------------------------------------------
#: Long side (px) of the images a viewer keeps and shows: sharp on any screen and ~10 MB as float32,
#: where a 20-Mpx film at full size is ~80 MB.
DISPLAY_LONG_SIDE = 1600


def display_copy(pixels: np.ndarray, label_map: np.ndarray | None = None,
                 long_side: int = DISPLAY_LONG_SIDE) -> tuple[np.ndarray, np.ndarray | None]:
    """A radiograph and its label map reduced for display, so that a viewer keeps a few MB per
    case instead of the full-size film.

    Pixels are averaged over step x step blocks (no aliasing); labels take every step-th pixel
    (label ids must not be averaged). Both come out the same shape, and are copies: nothing of the
    full-size arrays is kept alive.

    Args:
        pixels: 2-D image in [0, 1].
        label_map: same-shape label ids, or ``None``.
        long_side: the longest side wanted, in px; smaller images are copied as they are.

    Returns:
        ``(pixels, label_map)``: float32 pixels, and the label map or ``None``.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    labels = None if label_map is None else np.asarray(label_map)
    step = max(1, math.ceil(max(pixels.shape) / long_side))
    rows, cols = (pixels.shape[0] // step) * step, (pixels.shape[1] // step) * step
    if step == 1 or rows == 0 or cols == 0:
        small = np.ascontiguousarray(pixels[::step, ::step]).copy()
    else:
        small = pixels[:rows, :cols].reshape(rows // step, step, cols // step, step).mean(axis=(1, 3), dtype=np.float32)
    if labels is not None:
        labels = np.ascontiguousarray(labels[: small.shape[0] * step : step, : small.shape[1] * step : step]).copy()
    return small, labels
