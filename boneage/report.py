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

DISCLAIMER = (
    "Research software, not a medical device. Estimates must be reviewed by a qualified reader. "
    "Models trained on RSNA Pediatric Bone Age Challenge films (research use only)."
)


# ---------------------------------------------------------------------------------------------
# Words for a reader
# ---------------------------------------------------------------------------------------------
def agreement_text(result: BoneAgeResult) -> tuple[str, str]:
    """How the two estimates relate, in words for a reader (the decision is the result's own
    ``agreement``, made in :mod:`boneage.estimate`).

    Args:
        result: a finished result.

    Returns:
        ``(kind, sentence)``; kind is ``"disagree"``, ``"wide"`` (allowed by the intervals but
        large, or allowed only by a wide interval), ``"agree"`` or ``"n/a"`` (fewer than two estimates).
    """
    diff = result.difference_months
    if result.agreement == "n/a" or diff is None:
        return "n/a", "Only one estimate is available: no comparison."
    if result.agreement == "disagree":
        return "disagree", f"Methods disagree by {abs(diff):.0f} months — more than their intervals allow."
    if result.agreement != "agree":
        return "wide", (f"The methods differ by {diff:+.0f} months; their intervals are wide enough to allow it, "
                        "so neither confirms the other. Review the film.")
    return "agree", f"Methods agree (difference {diff:+.0f} months, within their intervals)."


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


def overlay_rgb(pixels: np.ndarray, label_map: np.ndarray | None, opacity: float = 0.45) -> np.ndarray:
    """Blend a label map over a radiograph.

    Args:
        pixels: 2-D float image in [0, 1] (bone bright).
        label_map: same-shape label ids, or ``None`` for the plain image.
        opacity: 0 (image only) to 1 (labels only) where a bone is labelled.

    Returns:
        ``(rows, cols, 3)`` uint8 RGB image.
    """
    gray = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if label_map is not None and opacity > 0:
        labels = np.asarray(label_map)
        if labels.shape != gray.shape:
            raise ValueError(f"label map shape {labels.shape} differs from the image {gray.shape}")
        colours = label_colours().astype(np.float32)
        mask = labels > 0
        lab = np.clip(labels, 0, anatomy.NUM_CLASSES - 1)
        rgb[mask] = (1 - opacity) * rgb[mask] + opacity * colours[lab[mask]]
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
                   hover_long_side: int = 256) -> Any:
    """Zoomable plotly figure of the full-resolution radiograph with the bone overlay.

    Hovering shows the bone under the cursor (from a downsampled copy of the label map, so the
    page stays light).
    """
    import plotly.graph_objects as go

    rgb = overlay_rgb(pixels, label_map, opacity)
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


def figure_bone_age_chart(result: BoneAgeResult) -> Any:
    """Bone age against chronological age with the Brush Foundation +-1 and +-2 SD bands, and
    the patient's two estimates (needs sex; chronological age places the point)."""
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
    for est, colour in ((result.multistep, "#d62728"), (result.direct, "#2ca02c")):
        if est.available and x is not None:
            fig.add_trace(go.Scatter(
                x=[x / 12], y=[est.age_months / 12], mode="markers", marker=dict(size=12, color=colour),
                error_y=dict(type="data", symmetric=False, array=[(est.upper_90 - est.age_months) / 12],
                             arrayminus=[(est.age_months - est.lower_90) / 12]),
                name=f"{'Multi-step' if est.method == 'multistep' else 'End-to-end'} (90% interval)"))
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
    """The per-bone table as display rows (bones not seen at all are left out)."""
    rows = []
    for b in result.bones:
        if not b["present"]:
            continue
        mean, sd = b.get("reference_mean"), b.get("reference_sd")
        rows.append({
            "bone": anatomy.display_name(b["bone"]),
            "measurement": (b.get("feature") or "").split(".", 1)[-1].replace("_", " "),
            "value": _num(b.get("value")),
            "reference (mean ± SD)": f"{mean:.3g} ± {sd:.2g}" if mean is not None and sd is not None else "",
            "z-score": _num(b.get("z_score"), 1),
            "implied age": years_months(b.get("implied_age_months")),
            "length (mm)": _num(b.get("length_mm"), 1),
            "length (px)": _num(b.get("length_px"), 0),
            "plausible": "yes" if b["plausible"] else "NO: " + ", ".join(b.get("flags") or []),
        })
    return rows


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
    for est, name in ((result.multistep, "Multi-step"), (result.direct, "End-to-end")):
        if est.sds is not None:
            sds.append(f"{name}: {est.sds:+.2f} SD")
    rows = bone_table_rows(result)
    table = ""
    if rows:
        head = "".join(f"<th>{e(k)}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{e('' if v is None else str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
        table = f"<h2>Per-bone measurements</h2><table><tr>{head}</tr>{body}</table>"
    status = "" if result.ok else f'<p class="warn"><b>{e(result.status.upper())}</b>: {e(result.reason)}</p>'
    qc = "".join(f"<li>{e(q)}</li>" for q in result.qc)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Bone age report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 6px}}
.box{{display:inline-block;border:1px solid #999;border-radius:6px;padding:8px 14px;margin:4px}}
.warn{{color:#a00}}img{{max-width:100%}}@media print{{.noprint{{display:none}}}}</style></head><body>
<h1>Bone age report</h1>
<p>Image: {e(str(result.path))} &middot; generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>
{status}
<p>Sex: {e(result.sex or 'unknown')} ({e(result.sex_source)}) &middot; chronological age:
{e(years_months(result.chronological_age_months))} ({e(result.chronological_age_source)})</p>
<div class="box"><b>Multi-step</b><br>{e(estimate_text(result.multistep))}</div>
<div class="box"><b>End-to-end</b><br>{e(estimate_text(result.direct))}</div>
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
