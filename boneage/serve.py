"""``boneage serve``: a DICOM node that a PACS routes hand radiographs to.

A Storage SCP (pynetdicom) receives images; each is written to a spool folder on disk *before*
the C-STORE is answered, so a received image survives a crash or a restart. One worker thread
estimates the spooled images in arrival order with one :class:`~boneage.estimate.BoneAgeEstimator`
(models loaded once), writes a record per image to ``--results`` (the columns of ``boneage
predict``, with batch's :class:`~boneage.batch.RecordWriter` and :class:`~boneage.batch.OutputLock`)
and, for an ok hand, puts the DICOM SR (and with ``--sc`` the Secondary Capture) in an outbox
folder. A sender thread C-STOREs the outbox to the destination and deletes each file only once the
destination has taken it; failed sends are retried with a growing pause, and the outbox is sent
again after a restart. A rejected or unreadable image gets a log line and a record, no SR.

Bounded: at most ``max_queue`` images wait in the spool (more are answered "out of resources",
0xA700, which a PACS retries later), one is estimated at a time, and at most ``max_associations``
associations are open, so memory stays bounded whatever the PACS sends. Anything a peer sends is
caught per association: a malformed association or dataset never stops the node.

Spool layout (all patient data): ``incoming/`` images received, not yet recorded;
``outbox/`` SR/SC files not yet delivered; ``undeliverable/`` outbox files that cannot be read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boneage.batch import OutputLock, RecordWriter, UsageError, check_device, check_output, columns, output_kind, record
from boneage.estimate import BoneAgeEstimator

log = logging.getLogger("boneage.serve")

#: C-STORE status codes (PS3.4 Annex B.2.3).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
#: Statuses after which a sent file counts as delivered (success and the "stored, but" warnings).
DELIVERED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class ServeError(RuntimeError):
    """The node cannot run here (pynetdicom is missing)."""


@dataclass
class ServeSettings:
    """Settings of the DICOM node (flags, or keys of a TOML file: top level or a ``[serve]`` table).

    Attributes:
        aet: this node's AE title.
        port: the port to listen on (0: any free port, for tests).
        bind: the address to listen on (default this machine only; ``0.0.0.0`` for the network).
        destination: where results go, ``AET@HOST:PORT`` (the PACS).
        results: the records file (``.csv`` or ``.jsonl``), appended to; locked while the node runs.
        spool: the folder for received images and unsent results (default ``<results>.spool``).
        sc: also send a Secondary Capture of the result page.
        keep_identifiers: copy patient identifiers into the records.
        device: ``cpu`` or ``cuda``.
        max_queue: most received images waiting to be estimated.
        max_associations: most associations open at once.
        calling_aets: only these AE titles may send (default any).
        retry_initial_s, retry_max_s: pause after a failed send, doubled up to the maximum.
        network_timeout_s: timeout of every network step (connect, association, each message).
    """

    aet: str = "BONEAGE"
    port: int = 11112
    bind: str = "127.0.0.1"
    destination: str = ""
    results: str = ""
    spool: str = ""
    sc: bool = False
    keep_identifiers: bool = False
    device: str = "cpu"
    max_queue: int = 32
    max_associations: int = 4
    calling_aets: list[str] = field(default_factory=list)
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    network_timeout_s: float = 30.0

    @property
    def spool_dir(self) -> Path:
        return Path(self.spool) if self.spool else Path(f"{self.results}.spool")

    def destination_parts(self) -> tuple[str, str, int]:
        """``(aet, host, port)`` of the destination.

        Raises:
            UsageError: not ``AET@HOST:PORT``.
        """
        match = re.fullmatch(r"([^@\\]{1,16})@(\[[^\]]+\]|[^:@]+):(\d{1,5})", self.destination.strip())
        if not match or not 0 < int(match.group(3)) < 65536:
            raise UsageError(f"destination {self.destination!r}: give AET@HOST:PORT, e.g. PACS@10.0.0.5:104")
        return match.group(1).strip(), match.group(2).strip("[]"), int(match.group(3))


def load_settings(config: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ServeSettings:
    """Settings from a TOML file, then flags (a flag given wins), all checked before any work.

    Args:
        config: a TOML file (keys as the flags, ``_`` for ``-``; top level or ``[serve]``).
        overrides: flag values; ``None`` values mean "not given".

    Returns:
        The checked settings.

    Raises:
        UsageError: an unreadable file, an unknown key, a value of the wrong type or range.
    """
    import tomllib

    values: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(ServeSettings)}
    if config is not None:
        try:
            with open(config, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise UsageError(f"config {config} not found") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"config {config} cannot be read ({exc})") from None
        data = data.get("serve", data) if isinstance(data.get("serve"), dict) else data
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                raise UsageError(f"config {config}: unknown setting {key!r} (known: {', '.join(sorted(names))})")
            values[name] = value
    values.update({k.replace("-", "_"): v for k, v in (overrides or {}).items() if v is not None})
    defaults = ServeSettings()
    for name, value in values.items():
        if name not in names:
            raise UsageError(f"unknown setting {name!r}")
        want = type(getattr(defaults, name))
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if want is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok:
            raise UsageError(f"setting {name}: expected {want.__name__}, got {value!r}")
        values[name] = value
    settings = ServeSettings(**values)
    check_settings(settings)
    return settings


def check_settings(settings: ServeSettings) -> None:
    """Refuse settings the node cannot run with, before it starts.

    Raises:
        UsageError: naming the bad setting.
    """
    if not re.fullmatch(r"[\x20-\x5b\x5d-\x7e]{1,16}", settings.aet) or not settings.aet.strip():
        raise UsageError(f"aet {settings.aet!r}: 1-16 printable characters, no backslash")
    if not 0 <= settings.port < 65536:
        raise UsageError(f"port {settings.port}: must be 0-65535")
    if not settings.results:
        raise UsageError("results: give the records file (--results FILE.csv or FILE.jsonl)")
    if not settings.destination:
        raise UsageError("destination: give where results go (--destination AET@HOST:PORT)")
    settings.destination_parts()
    for name in ("max_queue", "max_associations"):
        if getattr(settings, name) < 1:
            raise UsageError(f"{name} must be at least 1")
    if not 0 < settings.retry_initial_s <= settings.retry_max_s or settings.network_timeout_s <= 0:
        raise UsageError("retry_initial_s, retry_max_s and network_timeout_s must be > 0, initial <= max")
    check_output(settings.results)
    check_device(settings.device)


def readable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes the reader decodes here (uncompressed, and each compressed one with an
    installed decoder): what the node accepts."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    accepted = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                accepted.append(str(uid))
        except NotImplementedError:
            continue  # video, multi-component J2K, ...: no decoder in pydicom
    return accepted


def _safe(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]", "_", text.strip())[:16] or "_"


class DicomNode:
    """The running node: a Storage SCP, the estimating worker and the sender.

    Args:
        settings: checked settings (:func:`load_settings`).
        estimator: models to use (default: the shipped ones, loaded once by the worker at start).
    """

    def __init__(self, settings: ServeSettings, estimator: BoneAgeEstimator | None = None) -> None:
        self.settings = settings
        self.estimator = estimator
        self.incoming = settings.spool_dir / "incoming"
        self.outbox = settings.spool_dir / "outbox"
        self.undeliverable = settings.spool_dir / "undeliverable"
        self.port: int | None = None
        self.delivered = 0
        self._lock: OutputLock | None = None
        self._writer: RecordWriter | None = None
        self._server: Any = None
        self._ae: Any = None
        self._stop = threading.Event()
        self._work_ready = threading.Condition()
        self._send_now = threading.Event()
        self._queued = 0
        self._queue_lock = threading.Lock()
        self._ids = itertools.count()
        self._threads: list[threading.Thread] = []

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> DicomNode:
        """Lock the results, recover the spool, start the worker, the sender and the listener.

        Raises:
            UsageError: the results file is locked by another node or run, or damaged; the port
                cannot be listened on.
            ServeError: pynetdicom is missing.
        """
        try:
            from pynetdicom import AE, AllStoragePresentationContexts, evt
            from pynetdicom.sop_class import Verification
        except ImportError:
            raise ServeError("boneage serve needs pynetdicom: pip install -e . (it is a dependency)") from None
        s = self.settings
        for folder in (self.incoming, self.outbox, self.undeliverable):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = OutputLock(s.results).acquire()
        try:
            kind = output_kind(s.results)
            # Every record is kept on restart (redo=None): the image behind a failed one is gone.
            self._writer = RecordWriter(s.results, append=True, redo=None,
                                        fields=columns(s.keep_identifiers) if kind == "csv" else None)
            self._recover()
            ae = AE(ae_title=s.aet)
            ae.maximum_associations = s.max_associations
            for name in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
                setattr(ae, name, s.network_timeout_s)
            if s.calling_aets:
                ae.require_calling_aet = list(s.calling_aets)
            syntaxes = readable_transfer_syntaxes()
            ae.add_supported_context(Verification)
            for context in AllStoragePresentationContexts:
                ae.add_supported_context(context.abstract_syntax, syntaxes)
            try:
                self._server = ae.start_server((s.bind, s.port), block=False,
                                               evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
            except OSError as exc:
                raise UsageError(f"cannot listen on {s.bind}:{s.port} ({exc.strerror or exc})") from None
            self._ae = ae
            self.port = int(self._server.server_address[1])
        except BaseException:
            self._close_output()
            raise
        for name, target in (("boneage-worker", self._work), ("boneage-sender", self._send_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        dest_aet, host, port = s.destination_parts()
        log.info("listening as %s on %s:%d; results to %s@%s:%d; records in %s; %d image(s) waiting, %d result(s) "
                 "to send", s.aet, s.bind, self.port, dest_aet, host, port, s.results, self._queued,
                 len(self._outbox_files()))
        return self

    def stop(self, timeout_s: float = 120.0) -> None:
        """Stop listening, finish the film being estimated, stop sending, close the records.

        Images still waiting stay in the spool and results not yet sent stay in the outbox: the
        next start takes them up. Safe to call more than once.
        """
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None
        self._stop.set()
        with self._work_ready:
            self._work_ready.notify_all()
        self._send_now.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            # Left running, the records stay open; the film is redone at the next start.
            log.warning("stopping with work still in progress; it is taken up at the next start")
            return
        self._threads = []
        self._close_output()
        log.info("stopped (%d image(s) waiting, %d result(s) to send)", self._count_incoming(),
                 len(self._outbox_files()))

    def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT (Ctrl-C), then stop gracefully."""
        self.start()

        def request_stop(signum: int, _frame: Any) -> None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            self._stop.set()

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _close_output(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- receiving ---------------------------------------------------------------------------------
    def _incoming_files(self) -> list[Path]:
        # Names start with the receipt time: sorted = arrival order. Hidden = being written.
        return sorted(p for p in self.incoming.glob("*.dcm") if not p.name.startswith("."))

    def _count_incoming(self) -> int:
        return len(self._incoming_files())

    def _recover(self) -> None:
        """Drop spooled images whose record was written before a stop (they are done)."""
        done = self._writer.done if self._writer is not None else {}
        for path in self._incoming_files():
            if self._key(path) in done:
                path.unlink(missing_ok=True)
        for tmp in self.incoming.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)  # a receipt cut by a crash was never answered: the PACS resends it
        self._queued = self._count_incoming()

    @staticmethod
    def _key(path: Path) -> str:
        """The record key of a spooled image: ``dicom://<calling AET>/<receipt id>``."""
        stem, _, aet = path.name[: -len(".dcm")].partition("__")
        return f"dicom://{aet}/{stem}"

    def _on_store(self, event: Any) -> int:
        """A C-STORE: spool the dataset as received (not decoded) and answer success once on disk."""
        try:
            with self._queue_lock:
                if self._queued >= self.settings.max_queue:
                    log.warning("queue full (%d images waiting): C-STORE answered 'out of resources'",
                                self._queued)
                    return STATUS_OUT_OF_RESOURCES
                self._queued += 1
            try:
                data = event.encoded_dataset(include_meta=True)
                calling = _safe(str(event.assoc.requestor.ae_title))
                sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
                stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
                digest = hashlib.sha1(sop.encode()).hexdigest()[:10]  # links a record to its image, UID-free
                name = f"{stamp}-{next(self._ids) % 10000:04d}-{digest}__{calling}.dcm"
                path = self.incoming / name
                tmp = self.incoming / f".{name}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with self._queue_lock:
                    self._queued -= 1
                raise
            log.info("%s: received", self._key(path))
            with self._work_ready:
                self._work_ready.notify()
            return STATUS_SUCCESS
        except OSError as exc:  # disk full or gone: the PACS keeps the image and retries
            log.error("cannot spool a received image (%s): answered 'out of resources'", exc.strerror or exc)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # a malformed dataset or request: refuse it, keep serving
            log.error("refused a C-STORE that cannot be read (%s: %s)", type(exc).__name__, exc)
            return STATUS_CANNOT_UNDERSTAND

    # -- estimating --------------------------------------------------------------------------------
    def _next_image(self) -> Path | None:
        with self._work_ready:
            while not self._stop.is_set():
                files = self._incoming_files()
                if files:
                    return files[0]
                self._work_ready.wait(1.0)
        return None

    def _work(self) -> None:
        if self.estimator is None:
            self.estimator = BoneAgeEstimator.load(device=self.settings.device)
            log.info("models loaded: %s", ", ".join(f"{k} {v}" for k, v in sorted(self.estimator.versions.items())))
        while (path := self._next_image()) is not None:
            try:
                self._process(path)
            except Exception as exc:  # e.g. the records cannot be written: keep the image, try later
                log.error("%s: not recorded (%s: %s); retried in 10 s", self._key(path), type(exc).__name__, exc)
                self._stop.wait(10.0)

    def _process(self, path: Path) -> None:
        """Estimate one spooled image, queue its SR/SC, record it, then drop it from the spool."""
        from boneage.dicom_export import export_for

        assert self.estimator is not None and self._writer is not None
        key = self._key(path)
        started = time.monotonic()
        result = self.estimator.estimate(path, name=key)
        exports: dict[str, str] = {}
        if result.ok:
            written, errors = export_for(result, self.outbox, self.outbox if self.settings.sc else None, source=path)
            exports = {f"{kind}_path": str(p) for kind, p in written.items()}
            result.qc.extend(f"DICOM export failed ({e})" for e in errors)
            for error in errors:
                log.error("%s: %s", key, error)
        result.label_map = None
        self._writer.write(record(result, output_kind(self.settings.results), self.settings.keep_identifiers, exports))
        path.unlink(missing_ok=True)
        with self._queue_lock:
            self._queued = max(0, self._queued - 1)
        took = time.monotonic() - started
        if result.ok:
            ages = ", ".join(f"{e.method} {e.age_months:.0f} mo" for e in
                             (result.combined, result.multistep, result.perbone, result.direct) if e.available)
            log.info("%s: ok (%s) in %.1f s; %s queued for sending", key, ages or "no estimate", took,
                     " and ".join(k.upper() for k in sorted(k[:2] for k in exports)) or "nothing")
            self._send_now.set()
        else:
            log.info("%s: %s (%s); no SR", key, result.status, result.reason)

    # -- sending -----------------------------------------------------------------------------------
    def _outbox_files(self) -> list[Path]:
        return sorted(p for p in self.outbox.glob("*.dcm") if not p.name.startswith("."))

    def _send_loop(self) -> None:
        pause = self.settings.retry_initial_s
        while not self._stop.is_set():
            if not self._outbox_files():
                self._send_now.wait(5.0)
                self._send_now.clear()
                continue
            if self._send_outbox():
                pause = self.settings.retry_initial_s
                continue
            log.warning("%d result(s) kept in %s; next try in %.0f s", len(self._outbox_files()), self.outbox, pause)
            self._stop.wait(pause)  # a new result does not shorten the pause: the destination is down
            pause = min(pause * 2, self.settings.retry_max_s)

    def _send_outbox(self) -> bool:
        """Send every outbox file over one association; each delivered one is deleted.

        Returns:
            Whether all were delivered.
        """
        import pydicom
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        s = self.settings
        dest_aet, host, port = s.destination_parts()
        ae = AE(ae_title=s.aet)
        for name in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, name, s.network_timeout_s)
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        try:
            assoc = ae.associate(host, port, ae_title=dest_aet)
        except Exception as exc:
            log.warning("cannot reach %s@%s:%d (%s)", dest_aet, host, port, exc)
            return False
        if not assoc.is_established:
            log.warning("%s@%s:%d did not accept the association", dest_aet, host, port)
            return False
        delivered_all = True
        try:
            for path in self._outbox_files():
                if self._stop.is_set() or not assoc.is_established:
                    return False
                try:
                    dataset = pydicom.dcmread(path)
                except Exception as exc:  # never retried forever, never deleted: set aside
                    log.error("%s cannot be read (%s); moved to %s", path.name, exc, self.undeliverable)
                    os.replace(path, self.undeliverable / path.name)
                    continue
                try:
                    status = assoc.send_c_store(dataset)
                except Exception as exc:
                    status = None
                    log.warning("%s: not sent (%s: %s)", path.name, type(exc).__name__, exc)
                code = getattr(status, "Status", None)
                if code in DELIVERED_STATUSES:
                    path.unlink(missing_ok=True)
                    self.delivered += 1
                    log.info("%s: delivered to %s", path.name, dest_aet)
                else:
                    delivered_all = False
                    if code is not None:
                        log.warning("%s: %s answered status 0x%04X; kept", path.name, dest_aet, code)
        finally:
            if assoc.is_established:
                assoc.release()
        return delivered_all


def serve_command(options: dict[str, Any]) -> int:
    """``boneage serve``: settings from ``options["config"]`` and the flags, then run until stopped.

    Args:
        options: the parsed flags (``config`` and the :class:`ServeSettings` names; ``None`` = not given).

    Returns:
        The exit code: 0 stopped cleanly, 2 bad settings (or the port or results file taken),
        3 pynetdicom missing.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("pynetdicom", "highdicom"):  # a line per association / per copied module otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = options.get("config")
    flags = {k: v for k, v in options.items() if k in {f.name for f in dataclasses.fields(ServeSettings)}}
    try:
        DicomNode(load_settings(config, flags)).run()
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    except ServeError as exc:
        log.error("%s", exc)
        return 3
    return 0
