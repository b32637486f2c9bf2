"""boneage — Streamlit app for clinicians. Run: ``streamlit run app.py``.

Layout only: every number comes from ``boneage.BoneAgeEstimator`` and every figure or report
from ``boneage.report``.
"""

from __future__ import annotations

import hashlib

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


@st.cache_resource(show_spinner="Loading models (once)...")
def estimator() -> BoneAgeEstimator:
    return BoneAgeEstimator.load()


@st.cache_data(show_spinner=False, max_entries=64)
def read_upload(data: bytes, name: str) -> Radiograph:
    return load_radiograph(data, name=name)


@st.cache_data(show_spinner="Estimating bone age...", max_entries=64,
               hash_funcs={Radiograph: lambda r: hashlib.sha1(r.pixels.tobytes()).hexdigest()})
def run_estimate(rad: Radiograph, name: str, sex: str | None, age: float | None) -> BoneAgeResult:
    return estimator().estimate(rad, sex=sex, chronological_age_months=age, name=name)


def sidebar() -> tuple[list[tuple[str, Radiograph | Exception, bytes | None]], bool, float]:
    st.sidebar.title("boneage")
    st.sidebar.caption(f"version {__version__} · research software, not a medical device")
    uploads = st.sidebar.file_uploader(
        "Radiographs (DICOM, PNG, JPEG)", accept_multiple_files=True,
        type=None, help="Left-hand PA radiographs. DICOM files without an extension are fine.",
    )
    cases: list[tuple[str, Radiograph | Exception, bytes | None]] = []
    for up in uploads or []:
        data = up.getvalue()
        try:
            cases.append((up.name, read_upload(data, up.name), data))
        except ImageReadError as exc:
            cases.append((up.name, exc, None))
    st.sidebar.markdown("**or open an example case** (synthetic hand)")
    for name in example_names():
        if st.sidebar.button(name.replace("_", " "), key=f"example-{name}"):
            st.session_state["example"] = name
    if not cases and st.session_state.get("example"):
        name = st.session_state["example"]
        cases.append((name, load_example(name), None))
    st.sidebar.divider()
    show_overlay = st.sidebar.toggle("Bone overlay", value=True)
    opacity = st.sidebar.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05)
    return cases, show_overlay, opacity


def patient_inputs(name: str, rad: Radiograph) -> tuple[str | None, float | None]:
    header_sex = {"F": "Female", "M": "Male"}.get(rad.sex or "", "Unknown")
    c1, c2 = st.columns(2)
    sex_label = c1.selectbox(
        "Sex" + (" (from header)" if rad.sex else ""), list(SEX_OPTIONS), index=list(SEX_OPTIONS).index(header_sex),
        key=f"sex-{name}", help="Unknown is allowed: both models handle it and say so.",
    )
    age = c2.number_input(
        "Chronological age (months)" + (" (from header)" if rad.chronological_age_months is not None else ""),
        min_value=0.0, max_value=300.0, step=1.0, key=f"age-{name}",
        value=None if rad.chronological_age_months is None else round(float(rad.chronological_age_months), 1),
        help="Needed only for the SDS of bone age against age.",
    )
    return SEX_OPTIONS[sex_label], age


def show_result(result: BoneAgeResult, rad: Radiograph, show_overlay: bool, opacity: float,
                source_bytes: bytes | None = None) -> None:
    if result.status != "ok":
        (st.error if result.status == "error" else st.warning)(f"**{result.status.upper()}** — {result.reason}")
        for note in result.qc:
            st.caption(note)
        return
    c1, c2, c3 = st.columns(3)
    for col, est, label in ((c1, result.multistep, "Multi-step"), (c2, result.direct, "End-to-end")):
        if est.available:
            col.metric(label, report.years_months(est.age_months),
                       delta=None if est.sds is None else f"SDS {est.sds:+.2f}", delta_color="off",
                       help=f"90% interval {report.years_months(est.lower_90)} – {report.years_months(est.upper_90)}")
            col.caption(f"90% interval: {report.years_months(est.lower_90)} – {report.years_months(est.upper_90)}")
        else:
            col.metric(label, "—")
            col.caption(est.note or "not available")
        if est.note and est.available:
            col.caption(est.note)
    kind, sentence = report.agreement_text(result)
    {"disagree": c3.error, "wide": c3.warning, "agree": c3.success}.get(kind, c3.caption)(sentence)
    if result.sds_note:
        c3.caption(result.sds_note)
    for note in result.qc:
        st.caption(f"QC: {note}")

    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(report.figure_overlay(rad.pixels, result.label_map if show_overlay else None, opacity),
                        use_container_width=True, config={"scrollZoom": True, "displaylogo": False})
        with st.expander("Bone colours"):
            st.dataframe(report.legend_rows(result.label_map), hide_index=True)
    with right:
        st.subheader("Bone age chart")
        st.plotly_chart(report.figure_bone_age_chart(result), use_container_width=True)
        st.caption(report.sds_range_note(result.sex))
    st.subheader("Per-bone measurements")
    rows = report.bone_table_rows(result)
    if rows:
        st.dataframe(rows, hide_index=True, use_container_width=True)
    else:
        st.caption("No per-bone table: the multi-step method did not run.")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Printable report (HTML)", report.html_report(result, rad.pixels),
                       file_name=f"{result.path}.report.html", mime="text/html")
    d2.download_button("Result (JSON)", report.result_json(result), file_name=f"{result.path}.json",
                       mime="application/json")
    if source_bytes is not None and rad.source_format == "dicom":
        try:
            sr = structured_report_bytes(result, source_bytes)
        except ExportError as exc:
            d3.caption(f"No DICOM SR: {exc}")
        else:
            d3.download_button("DICOM SR", sr, file_name=f"{result.path}.sr.dcm", mime="application/dicom")


def main() -> None:
    cases, show_overlay, opacity = sidebar()
    tab_case, tab_compare, tab_about = st.tabs(["Estimate", "Comparison of the methods", "About"])
    with tab_case:
        if not cases:
            st.title("Bone age from a hand radiograph")
            st.write("Upload one or more radiographs in the sidebar, or open an example case.")
        names = [n for n, _, _ in cases]
        chosen = st.radio("Case", names, horizontal=True) if len(cases) > 1 else (names[0] if names else None)
        for name, rad, data in cases:
            if name != chosen:
                continue
            st.header(name)
            if isinstance(rad, Exception):
                st.error(f"**ERROR** — {rad}")
                continue
            sex, age = patient_inputs(name, rad)
            show_result(run_estimate(rad, name, sex, age), rad, show_overlay, opacity, data)
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
            "Two estimates are offered because they fail differently. **Multi-step** segments every hand "
            "bone, measures it (epiphysis size, fusion, carpal ossification, lengths in mm when the image is "
            "calibrated) and reads the age off reference tables — every step can be checked in the per-bone "
            "table. **End-to-end** is one CNN from pixels to age. When they disagree, review the film.\n\n"
            + report.DISCLAIMER
        )


main()
