"""Read-path calibration: fit the board's current gain and offset against an SMU on reference resistors.

The board reports currents with its nominal ADC calibration; the true transimpedance gain and offset
of each board differ by resistor and amplifier tolerances. A calibration fixture wires precision
resistors in place of a few array cells. For each resistor and read voltage the board READs the cell
and the SMU, across the same resistor, sources the same voltage and measures the true current. A
least-squares line I_true = gain * I_board + offset (with standard errors) is the correction that
`Board(calibration=...)` applies to every read.

File format (version 1), chosen by suffix; both are written atomically (temporary file, then rename):

* ``.json``: the dict of `ReadPathCalibration.to_dict()` (the same dict that run files embed in
  their ``calibration_json`` attribute).
* anything else (``.h5``): HDF5. Root attributes ``format`` = "rram-hil/readpath-calibration",
  ``version``, ``gain``, ``offset_a``, ``gain_se``, ``offset_se_a``, ``cov_gain_offset_a``,
  ``residual_rms_a``, ``smu_idn``, ``date_utc``, ``board_json`` (board identity as JSON) and
  ``voltages_v``; dataset ``reference_cells`` (row, col, ohms) and dataset ``points`` (cell index,
  v_read_v, i_board_a, i_smu_a): every pair of readings the fit used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from firmware_protocol.fileformat import FileFormat, atomic_write, utc_now

READPATH_FILE = FileFormat("rram-hil/readpath-calibration", "1", "a read-path calibration", version_key="version")
FORMAT = READPATH_FILE.name
VERSION = READPATH_FILE.major


class CalibrationFileError(ValueError):
    """A calibration file is missing, unreadable or not a read-path calibration."""


@dataclass(frozen=True)
class LineFit:
    """Least-squares line y = gain * x + offset with standard errors."""

    gain: float
    offset: float
    gain_se: float
    offset_se: float
    cov: float  # covariance of gain and offset
    residual_rms: float
    n: int


def fit_gain_offset(i_board: np.ndarray, i_true: np.ndarray) -> LineFit:
    """Ordinary least squares I_true = gain * I_board + offset (scipy.stats.linregress)."""
    x = np.asarray(i_board, dtype=float).ravel()
    y = np.asarray(i_true, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"board and SMU currents differ in length ({x.size} vs {y.size})")
    if x.size < 3:
        raise ValueError(f"a gain/offset fit needs at least 3 points, got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("board and SMU currents must be finite")
    if np.ptp(x) <= 0:
        raise ValueError("all board currents are equal: use several resistors or read voltages")
    from scipy import stats  # imported here: `rram` board commands start without loading scipy

    r = stats.linregress(x, y)
    resid = y - (r.slope * x + r.intercept)
    cov = -float(np.mean(x)) * float(r.stderr) ** 2  # Cov(slope, intercept) = -mean(x) * Var(slope)
    return LineFit(
        float(r.slope),
        float(r.intercept),
        float(r.stderr),
        float(r.intercept_stderr),
        cov,
        float(np.sqrt(np.mean(resid**2))),
        int(x.size),
    )


@dataclass(frozen=True)
class RefCell:
    """A reference resistor of the calibration fixture, wired in place of cell (row, col)."""

    row: int
    col: int
    ohms: float


@dataclass
class ReadPathCalibration:
    """Fitted correction I_true = gain * I_board + offset_a, with its provenance."""

    gain: float
    offset_a: float
    gain_se: float
    offset_se_a: float
    cov_gain_offset_a: float
    residual_rms_a: float
    reference_cells: list[RefCell]
    voltages_v: list[float]
    smu_idn: str
    date_utc: str
    board: dict[str, Any]
    points: dict[str, list[float]] = field(default_factory=dict)  # cell, v_read_v, i_board_a, i_smu_a

    def __post_init__(self) -> None:
        for key in ("gain", "offset_a", "gain_se", "offset_se_a", "residual_rms_a"):
            if not math.isfinite(getattr(self, key)):
                raise ValueError(f"read-path calibration: {key} must be finite, got {getattr(self, key)!r}")
        if not 0.5 < self.gain < 2.0:
            raise ValueError(f"read-path calibration: gain {self.gain:g} is implausible (expected near 1)")

    def apply(self, current_a: Any) -> Any:
        """Corrected current(s) (A) from the board's nominal current(s); floats stay floats."""
        out = self.gain * np.asarray(current_a, dtype=float) + self.offset_a
        return float(out) if np.ndim(current_a) == 0 and not isinstance(current_a, np.ndarray) else out

    # ------------------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what run files embed)."""
        d = asdict(self)
        d["reference_cells"] = [[c.row, c.col, c.ohms] for c in self.reference_cells]
        return {**READPATH_FILE.stamp(), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "calibration") -> ReadPathCalibration:
        """Inverse of to_dict; CalibrationFileError names what is wrong."""
        READPATH_FILE.check(d if isinstance(d, dict) else {}, source, CalibrationFileError)
        try:
            cells = [RefCell(int(r), int(c), float(o)) for r, c, o in d["reference_cells"]]
            return cls(
                gain=float(d["gain"]),
                offset_a=float(d["offset_a"]),
                gain_se=float(d["gain_se"]),
                offset_se_a=float(d["offset_se_a"]),
                cov_gain_offset_a=float(d["cov_gain_offset_a"]),
                residual_rms_a=float(d["residual_rms_a"]),
                reference_cells=cells,
                voltages_v=[float(v) for v in d["voltages_v"]],
                smu_idn=str(d["smu_idn"]),
                date_utc=str(d["date_utc"]),
                board=dict(d["board"]),
                points={k: [float(x) for x in v] for k, v in dict(d.get("points", {})).items()},
            )
        except KeyError as exc:
            raise CalibrationFileError(f"{source}: read-path calibration lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise CalibrationFileError(f"{source}: bad read-path calibration: {exc}") from None

    # ------------------------------------------------------------------------------ files
    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write JSON (.json) or HDF5 (any other suffix); FileExistsError unless `force`."""
        path = Path(path)
        with atomic_write(path, force=force, refusal="use --force to overwrite") as tmp:
            if path.suffix.lower() == ".json":
                tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
            else:
                self._write_h5(tmp)
        return path

    def _write_h5(self, path: Path) -> None:
        d = self.to_dict()
        with h5py.File(path, "w") as f:
            for key in (
                "format",
                "version",
                "gain",
                "offset_a",
                "gain_se",
                "offset_se_a",
                "cov_gain_offset_a",
                "residual_rms_a",
                "smu_idn",
                "date_utc",
            ):
                f.attrs[key] = d[key]
            f.attrs["board_json"] = json.dumps(self.board)
            f.attrs["voltages_v"] = np.asarray(self.voltages_v, dtype=float)
            cells = np.zeros(len(self.reference_cells), dtype=[("row", "<i4"), ("col", "<i4"), ("ohms", "<f8")])
            cells["row"] = [c.row for c in self.reference_cells]
            cells["col"] = [c.col for c in self.reference_cells]
            cells["ohms"] = [c.ohms for c in self.reference_cells]
            f.create_dataset("reference_cells", data=cells)
            pts = self.points or {k: [] for k in _POINT_FIELDS}
            arr = np.zeros(len(pts["i_board_a"]), dtype=[(k, "<f8") for k in _POINT_FIELDS])
            for k in _POINT_FIELDS:
                arr[k] = pts[k]
            f.create_dataset("points", data=arr)

    @classmethod
    def load(cls, path: str | Path) -> ReadPathCalibration:
        """Read a file written by `save`; one-line errors for a missing, foreign or damaged file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path}")
        if path.suffix.lower() == ".json":
            try:
                loaded = json.loads(path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CalibrationFileError(f"{path}: not a JSON calibration file ({exc.__class__.__name__})") from None
            return cls.from_dict(loaded, str(path))
        try:
            with h5py.File(path, "r") as f:
                d: dict[str, Any] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
                if d.get(READPATH_FILE.name_key) == READPATH_FILE.name:  # else from_dict names the format found
                    _read_h5_tables(f, path, d)
        except OSError as exc:
            raise CalibrationFileError(
                f"{path}: not a readable HDF5 calibration file ({str(exc).splitlines()[0][:120]})"
            ) from None
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            if isinstance(exc, CalibrationFileError):
                raise
            raise CalibrationFileError(f"{path}: damaged read-path calibration ({exc})") from None
        return cls.from_dict(d, str(path))

    def summary(self) -> dict[str, Any]:
        """The fitted numbers for printing."""
        return {
            "gain": self.gain,
            "gain_se": self.gain_se,
            "offset_a": self.offset_a,
            "offset_se_a": self.offset_se_a,
            "residual_rms_a": self.residual_rms_a,
            "n_points": len(self.points.get("i_board_a", [])),
            "board_id": self.board.get("board_id"),
            "smu": self.smu_idn,
            "date_utc": self.date_utc,
        }


_POINT_FIELDS = ("cell", "v_read_v", "i_board_a", "i_smu_a")


def _read_h5_tables(f: h5py.File, path: Path, d: dict[str, Any]) -> None:
    """Turn the HDF5 layout (JSON board attribute, two tables) into the fields of `to_dict`, in place."""
    d["board"] = json.loads(d.pop("board_json", "{}"))
    d["voltages_v"] = np.asarray(d.get("voltages_v", []), dtype=float).tolist()
    if "reference_cells" not in f or "points" not in f:
        raise CalibrationFileError(f"{path}: read-path calibration lacks its reference_cells/points datasets")
    cells = f["reference_cells"][()]
    d["reference_cells"] = [[int(c["row"]), int(c["col"]), float(c["ohms"])] for c in cells]
    pts = f["points"][()]
    d["points"] = {k: pts[k].astype(float).tolist() for k in (pts.dtype.names or ())}


def _check_inputs(board: Any, cells: list[RefCell], voltages: Sequence[float]) -> list[float]:
    if not cells:
        raise ValueError("no reference cells given (--ref-cell ROW,COL, one per resistor)")
    seen = set()
    for c in cells:
        if not (0 <= c.row < board.rows and 0 <= c.col < board.cols):
            raise ValueError(
                f"reference cell ({c.row}, {c.col}) is outside the board's {board.rows}x{board.cols} array"
            )
        if (c.row, c.col) in seen:
            raise ValueError(f"reference cell ({c.row}, {c.col}) is given twice")
        seen.add((c.row, c.col))
        if not (math.isfinite(c.ohms) and c.ohms > 0):
            raise ValueError(f"reference resistor at ({c.row}, {c.col}) must be positive, got {c.ohms!r} ohm")
    lo, hi = board.info.read_v_min_mv / 1000, board.info.read_v_max_mv / 1000
    vs = [float(v) for v in voltages]
    if not vs:
        raise ValueError("no read voltages given")
    for v in vs:
        if not (math.isfinite(v) and v > 0 and lo <= v <= hi):
            raise ValueError(f"read voltage {v!r} V is outside the board's read range ({max(lo, 0):g}..{hi:g} V, > 0)")
    if len(cells) * len(vs) < 3:
        raise ValueError("a gain/offset fit needs at least 3 (resistor, voltage) points")
    return vs


def calibrate(
    board: Any,
    smu: Any,
    ref_cells: Sequence[tuple[int, int]],
    resistors_ohm: Sequence[float],
    voltages: Sequence[float],
    *,
    connect: Callable[[RefCell], None] | None = None,
    compliance_a: float | None = None,
    nplc: float = 1.0,
    repeats: int = 1,
    r_tolerance: float = 0.05,
) -> ReadPathCalibration:
    """Read each reference resistor with the board and the SMU at each voltage; fit gain and offset.

    `connect(cell)` is called before each resistor is measured (switch a relay, or ask the operator).
    Saturated board reads are left out; a resistor whose SMU resistance (V/I) differs from its declared
    value by more than `r_tolerance` is refused, as that means the SMU is not across that resistor.
    """
    if len(ref_cells) != len(resistors_ohm):
        raise ValueError(
            f"{len(ref_cells)} reference cell(s) but {len(resistors_ohm)} resistor value(s): give one per cell"
        )
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    cells = [RefCell(int(r), int(c), float(o)) for (r, c), o in zip(ref_cells, resistors_ohm)]
    vs = _check_inputs(board, cells, voltages)
    limit = getattr(smu, "max_voltage_v", math.inf)
    if max(vs) > limit:  # refuse before anything is measured, not half-way through
        raise ValueError(f"read voltage {max(vs):g} V is beyond the SMU safety limit of +-{limit:g} V")
    if compliance_a is None:
        compliance_a = min(1.0, 2.0 * max(vs) / min(c.ohms for c in cells))
    smu.reset()
    smu.configure_voltage_source(compliance_a, nplc)
    pts: dict[str, list[float]] = {k: [] for k in _POINT_FIELDS}
    saved, board.calibration = board.calibration, None  # fit against the board's nominal currents
    try:
        for k, cell in enumerate(cells):
            if connect is not None:
                connect(cell)
            usable = 0
            for v in vs:
                reads = [board.read(cell.row, cell.col, v) for _ in range(int(repeats))]
                smu.set_voltage(v)
                smu.output(True)
                i_smu = float(np.mean([smu.measure_current() for _ in range(int(repeats))]))
                r_smu = v / i_smu if i_smu != 0 else math.inf
                if not abs(r_smu - cell.ohms) <= r_tolerance * cell.ohms:
                    raise ValueError(
                        f"reference resistor at ({cell.row}, {cell.col}): the SMU measures {r_smu:.4g} ohm at {v:g} V, "
                        f"declared {cell.ohms:.4g} ohm; check the wiring or --resistors"
                    )
                if any(r.saturated for r in reads):
                    continue
                pts["cell"].append(float(k))
                pts["v_read_v"].append(v)
                pts["i_board_a"].append(float(np.mean([r.current_a for r in reads])))
                pts["i_smu_a"].append(i_smu)
                usable += 1
            smu.output(False)
            smu.set_voltage(0.0)
            if usable == 0:
                raise ValueError(
                    f"every board read of the reference resistor at ({cell.row}, {cell.col}) ({cell.ohms:.4g} ohm) saturated "
                    f"the ADC: use a larger resistor or lower voltages"
                )
    finally:
        board.calibration = saved
        if getattr(smu, "output_on", False):
            smu.output(False)
    fit = fit_gain_offset(np.array(pts["i_board_a"]), np.array(pts["i_smu_a"]))
    d = board.describe()
    return ReadPathCalibration(
        gain=fit.gain,
        offset_a=fit.offset,
        gain_se=fit.gain_se,
        offset_se_a=fit.offset_se,
        cov_gain_offset_a=fit.cov,
        residual_rms_a=fit.residual_rms,
        reference_cells=cells,
        voltages_v=vs,
        smu_idn=smu.idn(),
        date_utc=utc_now(),
        board={k: d[k] for k in ("board_id", "port", "firmware", "protocol", "session_id", "rows", "cols")},
        points=pts,
    )
