"""Which instrument metadata emfuse keeps from each real file: a Markdown table.

For every real microscope file in ``../shared/data/formats`` (each spectrum image of a file
that holds several), the file is read as ``emfuse ingest`` reads it and the key figures the
canonical store carries as attributes are printed, one row per file, with a check that
each one equals RosettaSciIO's reading (its metadata, with its mapping from
``original_metadata`` applied the way HyperSpy does: ``emfuse.stores.metadata.complete_metadata``)
of the signal ``metadata_sources`` names. A mismatch is printed as ``value != expected``.

Usage::

    python benchmarks/ingest_metadata.py [--data ../shared/data/formats] [--out table.md]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emfuse.stores.formats.rsciio import PLUGINS  # noqa: E402
from emfuse.stores.ingest import read  # noqa: E402
from emfuse.stores.metadata import complete_metadata, key_figures  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "formats"
COLUMNS = ["beam_energy_kev", "magnification", "camera_length_mm", "acquired", "microscope", "detector",
           "eds_elevation_deg", "eds_azimuth_deg", "live_time_s", "real_time_s", "energy_resolution_mnka_ev",
           "eels_collection_angle_mrad", "eels_convergence_angle_mrad", "dispersion_ev"]
SHORT = {"beam_energy_kev": "kV", "magnification": "mag", "camera_length_mm": "CL mm", "acquired": "acquired",
         "microscope": "microscope", "detector": "detector", "eds_elevation_deg": "elev °",
         "eds_azimuth_deg": "azim °", "live_time_s": "live s", "real_time_s": "real s",
         "energy_resolution_mnka_ev": "MnKa eV", "eels_collection_angle_mrad": "β mrad",
         "eels_convergence_angle_mrad": "α mrad", "dispersion_ev": "eV/ch"}
SINGLE_SPECTRA = {"test-EDS_spectrum.dm3", "test-EELS_spectrum.dm3"}  # refused: no spectrum image


def _datasets(folder: Path):
    """(label, Dataset) for every file and each of its spectrum images."""
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in PLUGINS or path.name in SINGLE_SPECTRA:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                yield path.name, path, read(path)
            except ValueError as exc:
                if "--signal INDEX" not in str(exc):
                    raise
                for index in [int(p.split("]")[0]) for p in str(exc).split("[")[1:]]:
                    yield f"{path.name} --signal {index}", path, read(path, signal=index)


def _rsciio_figures(path: Path, index: int, dispersion: float | None) -> dict:
    module = importlib.import_module(f"rsciio.{PLUGINS[path.suffix.lower()]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = module.file_reader(str(path), lazy=True)[index]
    tree, _ = complete_metadata(raw["metadata"], raw.get("original_metadata"), raw.get("mapping"))
    return key_figures(tree, dispersion_ev=dispersion)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def table(folder: Path) -> tuple[str, int]:
    """The Markdown table and the number of figures that differ from RosettaSciIO's."""
    lines = ["| file | from | " + " | ".join(SHORT[c] for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    mismatches = 0
    for label, path, ds in _datasets(folder):
        sources = json.loads(ds.attrs["metadata_sources"])
        cells = []
        for column in COLUMNS:
            value = ds.attrs.get(column)
            if value is not None:
                variable = sources["key_figures"][column]
                index = ds[variable].attrs["source_signal"]
                index = index[0] if isinstance(index, list) else index
                expected = _rsciio_figures(path, index, ds[variable].attrs.get("dispersion_ev")).get(column)
                if expected != value:
                    mismatches += 1
                    value = f"{value} != {expected}"
            cells.append(_cell(value))
        used = ", ".join(f"{k} [{v['signal']}]" for k, v in sources["variables"].items() if "signal" in v)
        if "maps" in sources["variables"]:
            used += ", maps [" + " ".join(str(v["signal"]) for v in sources["variables"]["maps"].values()) + "]"
        lines.append(f"| {label} | {used} | " + " | ".join(cells) + " |")
    return "\n".join(lines), mismatches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real files (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    import rsciio  # noqa: F401  (sets its logger's level on import: set ours after)

    logging.getLogger("rsciio").setLevel(logging.ERROR)  # the pruned Velox file's warning, once per read
    text, mismatches = table(args.data)
    print(text)
    print(f"\n{mismatches} figure(s) differ from RosettaSciIO's reading")
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
