"""boneage — Streamlit app for clinicians. Run: ``streamlit run app.py``.

Layout only: every number comes from ``boneage.BoneAgeEstimator`` and every figure or report
from ``boneage.report``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from boneage import __version__
from boneage.dicom_export import ExportError, structured_report_bytes
from boneage.estimate import BoneAgeEstimator, BoneAgeResult
from boneage.examples import example_names, load_example
from boneage.io import ImageReadError, Radiograph, load_radiograph
from boneage.paths import DOCS_DIR
from boneage import report

st.set_page_config(page_title="boneage", page_icon="🦴", layout="wide")

SEX_OPTIONS = {"Unknown": "unknown", "Female": "F", "Male": "M"}  # "unknown" overrides the header
#: Decoded full-size films kept (a 20-Mpx film is ~80 MB as float32): the case on screen and one
#: more, so switching between two cases does not decode again. More would grow with every upload.
FILMS_KEPT = 2
#: Finished results kept (a case at another sex or age is another); each holds display-size images only
#: (report.DISPLAY_LONG_SIDE: ~10 MB at most).
RESULTS_KEPT = 4


@dataclass(frozen=True)
class Case:
    """One case in the sidebar: an upload (its bytes) or a built-in example (its name)."""

    key: str  # unique per case, even for two uploads of one name: keys its widgets
    name: str
    digest: str  # of the bytes: the results cache key, and what makes download names unique
    data: bytes | None = None


@st.cache_resource(show_spinner="Loading models (once)...")
def estimator() -> BoneAgeEstimator:
    return BoneAgeEstimator.load()


@st.cache_resource(show_spinner=False, max_entries=FILMS_KEPT)
def read_upload(data: bytes, name: str) -> Radiograph:
    return load_radiograph(data, name=name)


@st.cache_data(show_spinner="Estimating bone age...", max_entries=RESULTS_KEPT)
def run_estimate(digest: str, name: str, sex: str | None, age: float | None,
                 _rad: Radiograph) -> tuple[BoneAgeResult, np.ndarray]:
    """The result with display-size label map, and the display-size pixels; keyed by the case's
    digest (never by hashing the pixels), the full-size film is not kept."""
    result = estimator().estimate(_rad, sex=sex, chronological_age_months=age, name=name)
    pixels, result.label_map = report.display_copy(_rad.pixels, result.label_map)
    return result, pixels


def sidebar() -> tuple[list[Case], bool, float, bool]:
    st.sidebar.title("boneage")
    st.sidebar.caption(f"version {__version__} · research software, not a medical device")
    uploads = st.sidebar.file_uploader(
        "Radiographs (DICOM, PNG, JPEG)", accept_multiple_files=True,
        type=None, help="Left-hand PA radiographs. DICOM files without an extension are fine.",
    )
    cases: list[Case] = []
    for i, up in enumerate(uploads or []):
        data = up.getvalue()
        digest = hashlib.sha1(data).hexdigest()
        cases.append(Case(f"{i}-{digest[:12]}", up.name, digest, data))
    st.sidebar.markdown("**or open an example case** (synthetic hand)")
    for name in example_names():
        if st.sidebar.button(name.replace("_", " "), key=f"example-{name}"):
            st.session_state["example"] = name
    if not cases and st.session_state.get("example"):
        name = st.session_state["example"]
        cases.append(Case(f"example-{name}", name, f"example-{name}"))
    st.sidebar.divider()
    show_overlay = st.sidebar.toggle("Bone overlay", value=True)
    by_age = st.sidebar.toggle(
        "Colour by each bone's age vs the combined estimate", value=False,
        help="Each bone's own age (per-bone method) against the combined estimate: blue younger, red older, "
             f"full colour at {report.MATURITY_FULL_SCALE_MONTHS:.0f} months apart; bones without an age stay uncoloured.")
    opacity = st.sidebar.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05)
    return cases, show_overlay, opacity, by_age


def case_labels(cases: list[Case]) -> dict[str, str]:
    """Case key -> what the reader sees; a repeated file name gets "(2)", "(3)"..."""
    seen: dict[str, int] = {}
    labels = {}
    for case in cases:
        seen[case.name] = seen.get(case.name, 0) + 1
        labels[case.key] = case.name if seen[case.name] == 1 else f"{case.name} ({seen[case.name]})"
    return labels


def patient_inputs(key: str, rad: Radiograph) -> tuple[str | None, float | None]:
    header_sex = {"F": "Female", "M": "Male"}.get(rad.sex or "", "Unknown")
    c1, c2 = st.columns(2)
    sex_label = c1.selectbox(
        "Sex" + (" (from header)" if rad.sex else ""), list(SEX_OPTIONS), index=list(SEX_OPTIONS).index(header_sex),
        key=f"sex-{key}", help="Unknown is allowed: both models handle it and say so.",
    )
    age = c2.number_input(
        "Chronological age (months)" + (" (from header)" if rad.chronological_age_months is not None else ""),
        min_value=0.0, max_value=300.0, step=1.0, key=f"age-{key}",
        value=None if rad.chronological_age_months is None else round(float(rad.chronological_age_months), 1),
        help="Needed only for the SDS of bone age against age.",
    )
    return SEX_OPTIONS[sex_label], age


def show_estimate(col, est, label: str) -> None:
    """One estimate as a metric with its interval, SDS and notes."""
    if est.available:
        col.metric(label, report.years_months(est.age_months),
                   delta=None if est.sds is None else f"SDS {est.sds:+.2f}", delta_color="off",
                   help=f"90% interval {report.years_months(est.lower_90)} – {report.years_months(est.upper_90)}")
        col.caption(f"90% interval: {report.years_months(est.lower_90)} – {report.years_months(est.upper_90)}")
        if est.note:
            col.caption(est.note)
    else:
        col.metric(label, "—")
        col.caption(est.note or "not available")


def show_result(result: BoneAgeResult, pixels: np.ndarray, case: Case, source_format: str,
                show_overlay: bool, opacity: float, by_age: bool = False) -> None:
    if result.status != "ok":
        (st.error if result.status == "error" else st.warning)(f"**{result.status.upper()}** — {result.reason}")
        for note in result.qc:
            st.caption(note)
        return
    # The headline is the combined estimate; each method stands beside it.
    columns = st.columns([4, 3, 3, 3])
    show_estimate(columns[0], result.combined, "Combined")
    for col, est in zip(columns[1:], (result.multistep, result.perbone, result.direct)):
        show_estimate(col, est, report.method_label(est.method))
    rus_carpal = report.rus_carpal_text(result)
    if rus_carpal:
        columns[2].caption(rus_carpal)
    kind, sentence = report.agreement_text(result)
    {"disagree": st.error, "wide": st.warning, "agree": st.success}.get(kind, st.caption)(sentence)
    if result.sds_note:
        st.caption(result.sds_note)
    for note in result.qc:
        st.caption(f"QC: {note}")

    colours = report.maturity_colours(result) if by_age else None
    left, right = st.columns([3, 2])
    with left:
        if by_age and colours is None:
            st.caption("No bone has its own age on this film (per-bone method unavailable): bones coloured by identity.")
        st.plotly_chart(report.figure_overlay(pixels, result.label_map if show_overlay else None, opacity,
                                              colours=colours),
                        use_container_width=True, config={"scrollZoom": True, "displaylogo": False},
                        key=f"overlay-{case.key}")
        with st.expander("Bone colours"):
            if colours is not None:
                st.dataframe(report.maturity_legend_rows(result), hide_index=True)
            else:
                st.dataframe(report.legend_rows(result.label_map), hide_index=True)
    with right:
        st.subheader("Bone age chart")
        st.plotly_chart(report.figure_bone_age_chart(result), use_container_width=True, key=f"chart-{case.key}")
        st.caption(report.sds_range_note(result.sex))
    st.subheader("Per-bone measurements and each bone's own age")
    rows = report.bone_table_rows(result)
    if rows:
        st.dataframe(rows, hide_index=True, use_container_width=True)
    else:
        st.caption("No per-bone table: neither the multi-step nor the per-bone method ran.")
    # Download names carry the bytes' digest: two uploads of one name never give the same file name.
    stem = Path(case.name).stem or "case"
    if case.data is not None:
        stem += f"-{case.digest[:10]}"
    d1, d2, d3 = st.columns(3)
    d1.download_button("Printable report (HTML)", report.html_report(result, pixels),
                       file_name=f"{stem}.report.html", mime="text/html", key=f"html-{case.key}")
    d2.download_button("Result (JSON)", report.result_json(result), file_name=f"{stem}.json",
                       mime="application/json", key=f"json-{case.key}")
    if case.data is not None and source_format == "dicom":
        try:
            sr = structured_report_bytes(result, case.data)
        except ExportError as exc:
            d3.caption(f"No DICOM SR: {exc}")
        else:
            d3.download_button("DICOM SR", sr, file_name=f"{stem}.sr.dcm", mime="application/dicom",
                               key=f"sr-{case.key}")


def main() -> None:
    cases, show_overlay, opacity, by_age = sidebar()
    tab_case, tab_compare, tab_about = st.tabs(["Estimate", "Comparison of the methods", "About"])
    with tab_case:
        if not cases:
            st.title("Bone age from a hand radiograph")
            st.write("Upload one or more radiographs in the sidebar, or open an example case.")
        labels = case_labels(cases)
        keys = list(labels)
        chosen = (st.radio("Case", keys, format_func=labels.get, horizontal=True) if len(keys) > 1
                  else (keys[0] if keys else None))
        for case in cases:
            if case.key != chosen:
                continue
            st.header(labels[case.key])
            # Only the case on screen is decoded: a list of uploads never holds many full-size films.
            try:
                rad = read_upload(case.data, case.name) if case.data is not None else load_example(case.name)
            except ImageReadError as exc:
                st.error(f"**ERROR** — {exc}")
                continue
            sex, age = patient_inputs(case.key, rad)
            result, pixels = run_estimate(case.digest, case.name, sex, age, rad)
            show_result(result, pixels, case, rad.source_format, show_overlay, opacity, by_age)
    with tab_compare:
        comparison = DOCS_DIR / "comparison.md"
        if comparison.is_file():
            st.markdown(comparison.read_text(), unsafe_allow_html=False)
            for png in sorted(DOCS_DIR.glob("comparison_*.png")):
                st.image(str(png))
        else:
            st.info("The comparison report (`boneage compare`) has not been generated in this version yet.")
    with tab_about:
        st.markdown(
            "Three methods are offered because they fail differently. **Multi-step** segments every hand "
            "bone, measures it (epiphysis size, fusion, carpal ossification, lengths in mm when the image is "
            "calibrated) and reads the age off reference tables — every step can be checked in the per-bone "
            "table. **Per-bone** cuts each bone of the RUS set and the carpus from the film and ages each "
            "with one network; bones that disagree with the others are left out and said. **End-to-end** "
            "is one CNN from pixels to age. **Combined**, the headline, is their weighted mean with weights "
            "fitted on films none of them trained on. When the methods disagree, review the film.\n\n"
            + report.DISCLAIMER
        )


main()
