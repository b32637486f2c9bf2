"""The ``boneage`` command line: argparse verbs, each a thin call into the package's modules.

Exit codes (all verbs): 0 success; 1 the run finished but some inputs failed or were rejected;
2 usage error (bad arguments, missing files named on the command line); 3 the verb's feature is
not available in this version; 4 the output could not be written (records so far intact);
130 interrupted (Ctrl-C; records so far intact).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_NOT_AVAILABLE = 3
EXIT_OUTPUT_FAILED = 4
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C

Handler = Callable[[argparse.Namespace], int]


def _not_landed(feature: str, issue: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        print(
            f"boneage {args.verb}: {feature} is not available in this version yet ({issue}).",
            file=sys.stderr,
        )
        return EXIT_NOT_AVAILABLE

    return handler


# --- synth -------------------------------------------------------------------------------------
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate synthetic hand radiographs with exact masks and bone lengths",
        description=(
            "Generate synthetic left-hand radiographs with exact per-bone label maps, true bone "
            "lengths in mm, bone age and sex. Writes DIR/images/, DIR/masks/ and DIR/labels.csv. "
            "Image i depends only on (seed, i)."
        ),
    )
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=512, help="long side in pixels (default 512)")
    p.add_argument("--format", choices=("png", "dicom"), default="png", help="image format")
    p.add_argument("--age-range", nargs=2, type=float, metavar=("A", "B"), default=None,
                   help="bone-age range in months (default 0-216 for girls, 0-228 for boys: the atlas's range)")
    p.add_argument("--sex", choices=("M", "F", "both"), default="both")
    p.add_argument("--workers", type=int, default=1, help="processes to use (same output for any number)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from boneage.synth import write_dataset

    if args.n < 0 or args.size < 64:
        print("boneage synth: --n must be >= 0 and --size >= 64", file=sys.stderr)
        return EXIT_USAGE
    if args.age_range is not None and not 0 <= args.age_range[0] <= args.age_range[1] <= 240:
        print("boneage synth: --age-range must be 0 <= A <= B <= 240 months", file=sys.stderr)
        return EXIT_USAGE
    labels = write_dataset(args.out, args.n, seed=args.seed, size=args.size, fmt=args.format,
                           age_range=tuple(args.age_range) if args.age_range else None,
                           sex=args.sex, progress=not args.no_progress, workers=max(1, args.workers))
    print(labels)
    return EXIT_OK


# --- segment -----------------------------------------------------------------------------------
def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="write a bone label map for each input radiograph",
        description=(
            "Segment every hand bone (shafts, epiphyses, carpals) in each input image and write "
            "one label map per input, same size as the input, as DIR/<stem>.png."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights", default=None, help="segmenter weights (default the shipped ones)")
    p.set_defaults(handler=_segment)


def _segment(args: argparse.Namespace) -> int:
    from boneage.segment import segment_command

    return segment_command(args)


# --- predict -----------------------------------------------------------------------------------
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="estimate bone age for files, folders or a manifest",
        description=(
            "Estimate bone age with both methods for every input and write one record per input "
            "(CSV or JSON Lines by the --out extension), each written as it completes."
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders (recursive)")
    p.add_argument("--out", required=True,
                   help="output FILE.csv or FILE.jsonl in an existing folder (JSON adds per-bone detail); "
                   "locked for the run (FILE.lock)")
    p.add_argument("--manifest", help="CSV with columns path[, sex, chronological_age_months]; overrides headers; "
                   "relative paths are read from the manifest's folder")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs already in --out and append; records of failed estimation (not of bad files) "
                   "and a record cut by an interruption are redone")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (models load once per worker)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="copy PatientID, PatientName, AccessionNumber and UIDs into the records (off by default)")
    p.add_argument("--sr-dir", help="write a DICOM Comprehensive SR (TID 1500) per ok DICOM input here, named "
                   "<source SOPInstanceUID>-<hash>.sr.dcm (column sr_path); carries the patient's identifiers")
    p.add_argument("--sc-dir", help="write a DICOM Secondary Capture of the result page per ok DICOM input here "
                   "(column sc_path); carries the patient's identifiers")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="where films are estimated: local (this machine; --workers processes) or ray (--workers "
                   "actors on a Ray cluster; needs the cluster extra)")
    p.add_argument("--ray-address", help="Ray cluster to join (auto, HOST:6379 or ray://HOST:10001); "
                   "default: start a local Ray instance")
    p.add_argument("--dicomweb", metavar="URL", help="read studies from this DICOMweb server (its root, e.g. "
                   "http://pacs:8042/dicom-web); each image instance is one record, keyed by its WADO-RS URL")
    p.add_argument("--study", action="append", default=[], metavar="UID",
                   help="a StudyInstanceUID to read from --dicomweb (repeatable)")
    p.add_argument("--studies", metavar="FILE", help="study UIDs to read from --dicomweb: one per line, or a CSV "
                   "with a study column")
    p.add_argument("--dicomweb-cache", metavar="DIR", help="keep the fetched DICOMweb files here (patient data; "
                   "default a temporary folder removed after the run)")
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from boneage import batch

    notes: list[str] = []
    try:
        # Settings first: a bad --out or --device fails before a long folder walk.
        batch.check_run(args.out, workers=args.workers, device=args.device, sr_dir=args.sr_dir, sc_dir=args.sc_dir,
                        engine=args.engine)
        with batch.predict_inputs(args.inputs, args.manifest, dicomweb=args.dicomweb, studies=args.study,
                                  study_list=args.studies, dicomweb_cache=args.dicomweb_cache,
                                  resume_from=args.out if args.resume else None, notes=notes) as items:
            _print_notes(notes)
            if not items:
                print("boneage predict: no inputs (give files, folders, --manifest or --dicomweb)", file=sys.stderr)
                return EXIT_USAGE
            counts = batch.run_batch(items, args.out, workers=args.workers, resume=args.resume,
                                     progress=False if args.quiet else None, device=args.device,
                                     sr_dir=args.sr_dir, sc_dir=args.sc_dir, keep_identifiers=args.keep_identifiers,
                                     notes=notes, engine=args.engine, ray_address=args.ray_address)
    except batch.EngineUnavailableError as exc:
        print(f"boneage predict: {exc}", file=sys.stderr)
        return EXIT_NOT_AVAILABLE
    except batch.UsageError as exc:
        _print_notes(notes)
        print(f"boneage predict: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except batch.OutputWriteError as exc:
        print(f"boneage predict: {exc}", file=sys.stderr)
        return EXIT_OUTPUT_FAILED
    except KeyboardInterrupt:
        print(f"\nboneage predict: interrupted; every record in {args.out} is complete: "
              "rerun the same command with --resume to finish", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_notes(notes)
    if not args.quiet:
        print(f"{sum(counts[k] for k in ('ok', 'error', 'rejected'))} written to {args.out}: {counts['ok']} ok, "
              f"{counts['error']} error, {counts['rejected']} rejected"
              + (f"; {counts['skipped']} already done (--resume), {counts['skipped_not_ok']} of them not ok"
                 if counts["skipped"] else "")
              + (f"; {counts['export_failed']} DICOM export(s) failed (see qc)" if counts["export_failed"] else ""),
              file=sys.stderr)
    bad = counts["error"] + counts["rejected"] + counts["export_failed"] + counts["skipped_not_ok"]
    return EXIT_OK if bad == 0 else EXIT_PARTIAL


# --- serve -------------------------------------------------------------------------------------
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a DICOM node: receive hand radiographs from a PACS, send back SR results",
        description=(
            "Run a DICOM Storage SCP (C-ECHO answered). Every image received is estimated; an ok hand's DICOM SR "
            "(and with --sc its Secondary Capture) is sent by C-STORE to --destination; every image gets a record "
            "in --results (the columns of predict). Received images and unsent results wait on disk (--spool), so "
            "nothing is lost across a restart; SIGTERM stops it gracefully. Settings by flags or --config TOML "
            "(same names, '_' for '-'; a flag wins)."
        ),
    )
    p.add_argument("--config", help="TOML file of settings (top level or a [serve] table)")
    p.add_argument("--aet", help="this node's AE title (default BONEAGE)")
    p.add_argument("--port", type=int, help="port to listen on (default 11112)")
    p.add_argument("--bind", help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    p.add_argument("--destination", metavar="AET@HOST:PORT", help="where SR/SC results are sent (the PACS)")
    p.add_argument("--results", metavar="FILE", help="records file, .csv or .jsonl (appended; locked while running)")
    p.add_argument("--spool", metavar="DIR", help="received images and unsent results (patient data; "
                   "default RESULTS.spool)")
    p.add_argument("--sc", action="store_const", const=True, help="also send a Secondary Capture of the result page")
    p.add_argument("--keep-identifiers", action="store_const", const=True,
                   help="copy patient identifiers into the records (off by default)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--max-queue", type=int, help="most images waiting; beyond, C-STORE is answered 'out of resources' "
                   "(default 32)")
    p.add_argument("--max-associations", type=int, help="most associations at once (default 4)")
    p.add_argument("--calling-aets", nargs="+", metavar="AET", help="accept images only from these AE titles")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from boneage.serve import serve_command

    return serve_command(vars(args))


def _print_notes(notes: list[str]) -> None:
    """Print notes for the user (once each) to stderr."""
    while notes:
        print(f"boneage predict: note: {notes.pop(0)}", file=sys.stderr)


# --- train -------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (segmenter, direct CNN, regression, hand check)",
        description="Train one of the project's models; the shipped weights are reproduced this way.",
    )
    models = p.add_subparsers(dest="model", metavar="MODEL", required=True)
    seg = models.add_parser("segmenter", help="bone segmentation network (trained on synthetic hands)")
    from boneage.training.segmenter import add_train_arguments  # light import (no torch)

    add_train_arguments(seg)
    seg.set_defaults(handler=_train_segmenter)
    multistep = models.add_parser(
        "multistep",
        help="multi-step reference tables + regression (needs the segmenter)",
        description=(
            "Segment and measure the RSNA development films with the shipped segmenter, build the "
            "maturity reference, fit the regression, build the mm length model from synthetic hands, "
            "evaluate on the fixed validation split; writes data/models/multistep/."
        ),
    )
    multistep.add_argument("--out", default=None, help="output folder (default data/models/multistep)")
    multistep.add_argument("--seed", type=int, default=0)
    multistep.add_argument("--synthetic-lengths", type=int, default=2000, help="synthetic hands for the mm length model")
    multistep.add_argument("--device", default="cpu")
    multistep.add_argument("--limit", type=int, default=None, help="use only the first N training films (quick runs)")
    multistep.add_argument("--workers", type=int, default=1, help="segmenting processes (default 1)")
    multistep.add_argument("--rsna-299", type=int, default=0,
                           help="add N squashed rsna-299 films to the regression's training data (-1: all; default 0)")
    multistep.add_argument("--rsna-299-squash-safe", action="store_true",
                           help="give the regression only the squashed films' features a lost aspect ratio leaves "
                                "alone (no shapes or areas)")
    multistep.add_argument("--rsna-299-aspect", choices=("squashed", "widened"), default="squashed",
                           help="measure the rsna-299 films squashed as stored (default) or widened back to the "
                                "median true aspect of the development films")
    multistep.set_defaults(handler=_train_multistep)
    direct = models.add_parser(
        "direct",
        help="end-to-end image -> bone-age CNN",
        description=(
            "Train the end-to-end CNN on rsna-299 + the rsna-dev training split, calibrate its 90% "
            "interval on a hold-out of the training split and report metrics on the validation split. "
            "Writes OUT/direct_cnn.pt (fp16) and OUT/metrics.json."
        ),
    )
    _add_train_direct_arguments(direct)
    direct.set_defaults(handler=_train_direct)
    handcheck = models.add_parser(
        "handcheck",
        help="is-this-a-hand check over the segmenter's reading (needs the segmenter)",
        description=(
            "Read real training-split hands, synthetic hands, generated non-hand images and negative "
            "films with the shipped segmenter, fit the hand check and set its threshold on a hold-out; "
            "writes data/models/handcheck/ (features cached outside the repo)."
        ),
    )
    from boneage.training.handcheck import add_train_arguments as add_handcheck_arguments

    add_handcheck_arguments(handcheck)
    handcheck.set_defaults(handler=_train_handcheck)
    perbone = models.add_parser(
        "perbone",
        help="per-bone maturity network over aligned bone crops (needs the segmenter)",
        description=(
            "Cut aligned bone crops of every labelled film with the shipped segmenter (cached outside "
            "the repo), train the per-bone network on rsna-299 + the rsna-dev training split, calibrate "
            "on the shared hold-out of the training split, report the validation split; resumable. "
            "Writes data/models/perbone/."
        ),
    )
    from boneage.training.perbone import add_train_arguments as add_perbone_arguments

    add_perbone_arguments(perbone)
    perbone.set_defaults(handler=_train_perbone)
    combined = models.add_parser(
        "combined",
        help="stacking of the three methods into the combined estimate (needs the other models)",
        description=(
            "Refit the multi-step bundle without the shared calibration hold-out, estimate the hold-out "
            "films with every method (sex given and withheld), fit the stacking weights and interval "
            "factors, report the validation split. Writes data/models/combined/."
        ),
    )
    from boneage.training.combine import add_train_arguments as add_combined_arguments

    add_combined_arguments(combined)
    combined.set_defaults(handler=_train_combined)
    sex = models.add_parser(
        "sex",
        help="sex-from-film network over the per-bone crops (used when a film comes without its sex)",
        description=("Train the sex-from-film network on the per-bone crop cache (rsna-299 + the rsna-dev "
                     "training split), fit its calibration (temperature and logit offset) on the shared hold-out, "
                     "report the validation split. --calibrate-only refits the calibration of the weights there. "
                     "Writes data/models/sex/."),
    )
    from boneage.training.sex import add_train_arguments as add_sex_arguments

    add_sex_arguments(sex)
    sex.set_defaults(handler=_train_sex)


def _train_segmenter(args: argparse.Namespace) -> int:
    from boneage.training.segmenter import train_command

    return train_command(args)


def _add_train_direct_arguments(parser: argparse.ArgumentParser) -> None:
    # Kept here (not imported from boneage.training.direct) so that parsing never imports torch;
    # the defaults equal boneage.training.direct.TrainConfig's (a test checks it).
    parser.add_argument("--epochs", type=int, default=40, help="epochs (default 40, the shipped weights)")
    parser.add_argument("--size", type=int, default=256, help="network input side in px (default 256, the shipped weights)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    parser.add_argument("--out", default="", help="output folder (default data/models/direct)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after this long and save")
    parser.add_argument("--limit", type=int, default=None, help="train on only N films (quick checks)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding processes (default 2)")
    parser.add_argument("--no-bf16", action="store_true", help="disable bf16 autocast (used when the CPU/GPU supports it)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default all cores; 1 is faster when the CPU is shared)")
    parser.add_argument("--lr", type=float, default=4e-3, help="peak learning rate (default 4e-3)")
    parser.add_argument("--init", default=None, help="start from these weights (a second training stage)")
    parser.add_argument("--widths", type=int, nargs=4, default=[32, 64, 128, 256], metavar="W",
                        help="channel widths of the four ResNet stages (default 32 64 128 256)")
    parser.add_argument("--members", type=int, default=1,
                        help="networks trained from different seeds and averaged (default 1; the shipped model uses 2)")


def _train_direct(args: argparse.Namespace) -> int:
    from boneage.training.direct import train_command

    return train_command(args)


def _train_perbone(args: argparse.Namespace) -> int:
    from boneage.training.perbone import train_command

    return train_command(args)


def _train_sex(args: argparse.Namespace) -> int:
    from boneage.training.sex import train_command

    return train_command(args)


def _train_combined(args: argparse.Namespace) -> int:
    from boneage.training.combine import train_command

    return train_command(args)


def _train_handcheck(args: argparse.Namespace) -> int:
    from boneage.training.handcheck import train_command

    return train_command(args)


# --- compare -----------------------------------------------------------------------------------
def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="learning curves and comparison of the two methods",
        description=(
            "Train both methods at several training-set sizes and evaluate them on the fixed "
            "validation split; writes docs/comparison.md and its plots."
        ),
    )
    p.add_argument("--quick", action="store_true", help="a small smoke run (minutes): tiny sizes and budgets")
    p.add_argument("--sizes", type=int, nargs="+", help="real training-set sizes (0 = all); default 50 ... all")
    p.add_argument("--synthetic-sizes", type=int, nargs="*", help="synthetic cohort sizes; empty to skip")
    p.add_argument("--repeats", type=int, help="draws per small size (default 3)")
    p.add_argument("--max-measured", type=int, help="segment and measure at most this many pool films")
    p.add_argument("--no-real", action="store_true", help="skip the real films (synthetic world only)")
    p.add_argument("--device", default="cpu", help="cpu or cuda for the CNN runs")
    p.add_argument("--workers", type=int, default=1, help="processes segmenting the real films (default 1)")
    p.add_argument("--out", help="report folder (default docs/)")
    p.add_argument("--merge", nargs="+", help="comparison_results.json of earlier runs to include (the (world, size) "
                   "pairs they have are not redone; a world comes from the first file that has it)")
    p.add_argument("--reuse-direct", metavar="RESULTS_JSON",
                   help="reuse the end-to-end CNN runs of an earlier comparison_results.json (same draws and CNN "
                   "settings, checked) and refit only the multi-step side, e.g. after a new segmenter")
    p.add_argument("--direct-budget", type=int, help="CNN training samples per run (default 60000)")
    p.add_argument("--direct-size", type=int, help="CNN input side for the comparison runs (default 128)")
    p.add_argument("--note", action="append", default=[],
                   help="a line for the report's notes, e.g. the command that made merged results (repeatable)")
    p.add_argument("--direct-min-epochs", type=int, help="fewest CNN epochs per run, even past the budget (default 3)")
    p.add_argument("--add-perbone", metavar="RESULTS_JSON",
                   help="add per-bone maturity curves (same real-world draws) to this earlier comparison_results.json "
                   "and rewrite the report; nothing else is retrained")
    p.add_argument("--perbone-budget", type=int, default=250_000, help="crops seen per per-bone run (default 250000)")
    p.add_argument("--perbone-repeats", type=int, default=1, help="draws per size for the per-bone runs (default 1)")
    p.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from boneage.paths import DOCS_DIR
    from boneage.training.compare import CompareConfig, run_compare

    out = args.out or str(DOCS_DIR)
    config = CompareConfig.quick_config(out) if args.quick else CompareConfig(out_dir=out)
    for name in ("sizes", "synthetic_sizes", "repeats", "max_measured"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, tuple(value) if isinstance(value, list) else value)
    config.device = args.device
    config.workers = args.workers
    if args.direct_budget:
        config.direct_sample_budget = args.direct_budget
    if args.direct_size:
        config.direct_input_size = args.direct_size
    if args.direct_min_epochs:
        config.direct_min_epochs = args.direct_min_epochs
    config.notes += args.note
    command = "boneage " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("boneage") else "boneage compare"
    if args.add_perbone:
        from boneage.training.compare import add_perbone_command

        try:
            path = add_perbone_command(args.add_perbone, out, args.perbone_budget, args.perbone_repeats, command)
        except (ValueError, OSError, KeyError) as exc:
            print(f"boneage compare: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"report written to {path}")
        return EXIT_OK
    try:
        path = run_compare(config, command=command, real=not args.no_real, merge=args.merge,
                           reuse_direct=args.reuse_direct)
    except (ValueError, OSError) as exc:
        print(f"boneage compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"report written to {path}")
    return EXIT_OK


# --- reference ---------------------------------------------------------------------------------
def _add_reference(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reference",
        help="reference tables: show the shipped ones, build a local one",
        description="Inspect the shipped growth/maturity reference tables or build a local one.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("sds", help="SDS of bone age against chronological age (Brush table)")
    show.add_argument("--bone-age", type=float, required=True, help="bone age in months")
    show.add_argument("--age", type=float, required=True, help="chronological age in months")
    show.add_argument("--sex", choices=("M", "F"), required=True)
    show.set_defaults(handler=_reference_sds)
    build = actions.add_parser(
        "build",
        help="build a maturity reference table from measured, age-labelled images",
        description=(
            "Build a local maturity reference (per-measurement mean and SD by age and sex, smoothed "
            "across age) from DATA/labels.csv (columns image or path, bone_age_months, sex; a mask "
            "column of label maps is measured directly, otherwise images are segmented)."
        ),
    )
    build.add_argument("data", help="folder with labels.csv")
    build.add_argument("--out", help="output CSV (default DATA/maturity_reference.csv)")
    build.add_argument("--bandwidth", type=float, default=12.0, help="smoothing across age, months (default 12)")
    build.set_defaults(handler=_reference_build)


def _train_multistep(args: argparse.Namespace) -> int:
    import json

    from boneage.multistep import MULTISTEP_DIR
    from boneage.training.multistep import train_multistep, write_model_card

    out = args.out or MULTISTEP_DIR
    metrics = train_multistep(out, seed=args.seed, synthetic_lengths=args.synthetic_lengths,
                              device=args.device, limit=args.limit, workers=args.workers, rsna_299=args.rsna_299,
                              rsna_299_squash_safe=args.rsna_299_squash_safe, rsna_299_aspect=args.rsna_299_aspect)
    write_model_card(out)
    print(json.dumps(metrics["validation"], indent=2))
    return EXIT_OK


def _reference_build(args: argparse.Namespace) -> int:
    from boneage.training.multistep import build_reference_command

    try:
        path = build_reference_command(args.data, args.out, bandwidth_months=args.bandwidth)
    except (FileNotFoundError, ValueError) as exc:
        print(f"boneage reference build: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"reference written to {path}")
    return EXIT_OK


def _reference_sds(args: argparse.Namespace) -> int:
    from boneage.references import bone_age_sds

    try:
        sds = bone_age_sds(args.bone_age, args.age, args.sex)
    except ValueError as exc:
        print(f"boneage reference sds: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{sds:+.2f}")
    return EXIT_OK


# --- app ---------------------------------------------------------------------------------------
def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="start the Streamlit web app",
        description="Start the clinician-facing Streamlit app (same as `streamlit run app.py`).",
    )
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="localhost", help="bind address (default localhost: this machine only)")
    p.set_defaults(handler=_app)


def _app(args: argparse.Namespace) -> int:
    import os
    import shutil

    from boneage.paths import REPO_DIR

    app = REPO_DIR / "app.py"
    streamlit = shutil.which("streamlit", path=os.path.dirname(sys.executable)) or shutil.which("streamlit")
    if not app.is_file() or streamlit is None:
        print(f"boneage app: needs {app} and the streamlit command (pip install -e .)", file=sys.stderr)
        return EXIT_NOT_AVAILABLE
    os.execv(streamlit, [streamlit, "run", str(app), "--server.port", str(args.port), "--server.address", args.address])
    return EXIT_OK  # not reached


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="boneage",
        description=(
            "Pediatric bone-age estimation from hand radiographs, two ways: a multi-step "
            "pipeline (segment bones, measure them, look the age up in reference tables) and an "
            "end-to-end CNN."
        ),
        epilog=("Exit codes: 0 ok, 1 some inputs failed, 2 usage error, 3 feature not available, "
                "4 output could not be written, 130 interrupted."),
    )
    from boneage import __version__

    parser.add_argument("--version", action="version", version=f"boneage {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add in (_add_synth, _add_segment, _add_predict, _add_serve, _add_train, _add_compare, _add_reference, _add_app):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``boneage`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
