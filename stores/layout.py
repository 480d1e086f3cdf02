"""The canonical layout of emfuse stores: variable names, dimensions, units.

Every dataset is ingested once into a Zarr v3 group that :func:`xarray.open_zarr`
opens as a Dataset, and every output store follows the same conventions. This
module is the single place where those names live; readers, writers, flows and
the report import them from here.

Dimensions and their index coordinates
--------------------------------------
``y``, ``x``
    float64, in nm (``units="nm"``) when the source gives a pixel size, else the
    pixel index (``units="px"``).
``energy``
    float64, in eV (``units="eV"``).
``element``
    str, chemical symbols; a second coordinate ``z`` (int, atomic number) on the
    same dimension.
``frame``, ``mode``, ``term``, ``iteration``
    int or str index coordinates.
``axis``
    str, ``["y", "x"]``: the components of a drift.
``lambda_chem``, ``lambda_tv``
    float64, the regularisation weights tried by the automatic search.
"""

from __future__ import annotations

# -- input (canonical) stores -------------------------------------------------
HAADF = "haadf"  # (y, x) elastic image
SPECTRUM = "spectrum"  # (y, x, energy) EDX or EELS spectrum image, counts
MAPS = "maps"  # (element, y, x) elemental maps, counts
MOVIE = "movie"  # (frame, y, x)
MODES = "modes"  # (mode, y, x), mode in {bf, df, hrtem}
MODE_LABELS = ("bf", "df", "hrtem")  # the mode coordinate of MODES, in tem-fuse's order (HRTEM last: the registration reference)
FLAT_REFERENCE = "flat_reference"  # (mode, y, x) each mode's beam without specimen (vacuum reference), > 0

# ground truth written beside synthetic data
TRUE_MAPS = "true_maps"  # (element, y, x) concentration used to draw the counts
TRUE_HAADF = "true_haadf"  # (y, x) noise-free HAADF
TRUE_MOVIE = "true_movie"  # (frame, y, x) noise-free movie (expected counts)
TRUE_DRIFT = "true_drift"  # (frame, axis) drift of the specimen in each frame, px
TRUE_STRUCTURE = "true_structure"  # (y, x) projected potential behind synthetic TEM modes

# -- output stores ------------------------------------------------------------
FUSED = "fused"  # (element, y, x) fused maps, normalised units
HAADF_MODEL = "haadf_model"  # (y, x) sum_i w_i x_i^gamma, normalised units
HAADF_VALID = "haadf_valid"  # (y, x) bool: False where the HAADF is saturated and left out of the HAADF term
COST = "cost"  # (term, iteration)
COST_TERMS = ("haadf", "chem", "tv")
LAMBDA_SCORE = "lambda_score"  # (lambda_chem, lambda_tv) score of each candidate of the lambda search
RESTORED = "restored"  # (frame, y, x) restored movie (or image as one frame), input units
GUARD_DECISION = "guard_decision"  # (frame,) int8: what the restore job's guard kept of each frame
DRIFT = "drift"  # (frame, axis) drift of each restored frame against the first, px, axis in {y, x}
AVERAGE = "average"  # (y, x) mean of the restored frames after drift correction
TEM_FUSED = "tem_fused"  # (y, x) AVAE fusion of the TEM modes
ATTENTION = "attention"  # (mode, y, x) AVAE attention weight of each mode (sum 1 over mode)

DIMS = {
    HAADF: ("y", "x"),
    SPECTRUM: ("y", "x", "energy"),
    MAPS: ("element", "y", "x"),
    MOVIE: ("frame", "y", "x"),
    MODES: ("mode", "y", "x"),
    FLAT_REFERENCE: ("mode", "y", "x"),
    TRUE_MAPS: ("element", "y", "x"),
    TRUE_HAADF: ("y", "x"),
    TRUE_MOVIE: ("frame", "y", "x"),
    TRUE_DRIFT: ("frame", "axis"),
    TRUE_STRUCTURE: ("y", "x"),
    FUSED: ("element", "y", "x"),
    HAADF_MODEL: ("y", "x"),
    HAADF_VALID: ("y", "x"),
    COST: ("term", "iteration"),
    LAMBDA_SCORE: ("lambda_chem", "lambda_tv"),
    RESTORED: ("frame", "y", "x"),
    DRIFT: ("frame", "axis"),
    AVERAGE: ("y", "x"),
    TEM_FUSED: ("y", "x"),
    ATTENTION: ("mode", "y", "x"),
}

# -- attributes ---------------------------------------------------------------
ATTR_COMPLETE = "complete"  # True only once the last tile is written
ATTR_VERSION = "emfuse_version"
ATTR_SOURCE = "source_path"
ATTR_SHA256 = "source_sha256"
ATTR_CREATED = "created"  # ISO 8601, UTC
ATTR_PARAMS = "params"  # JSON-able dict of the job's parameters
ATTR_SIGNAL = "signal_type"  # "EDX" or "EELS" for spectrum images
ATTR_ELEMENTS = "elements"  # list of str: the elements asked for at ingest (fuse maps them by default)
ATTR_INGEST_OPTIONS = "ingest_options"  # {"elements", "signal", "signal_type"} an input store was ingested with
ATTR_METADATA = "metadata"  # JSON str: the instrument metadata tree (HyperSpy names; stores/metadata.py)
ATTR_ORIGINAL_METADATA = "original_metadata"  # JSON str: the file's own metadata tree
ATTR_INGEST_NOTES = "ingest_notes"  # list of str: choices ingest made that a person should check (an image taken as HAADF by its grid)
ATTR_METADATA_UNMAPPED = "metadata_unmapped"  # list of str: metadata entries RosettaSciIO's mapping could not convert
ATTR_METADATA_SOURCES = "metadata_sources"  # JSON str: which signal of the file each variable and key figure came from
ATTR_LAMBDA_CHOICE = "lambda_choice"  # how "auto" lambdas were chosen (criterion, settings, result)
ATTR_CONVERGENCE = "convergence"  # list of str: cost curves not levelled off / oscillating ([] if fine)
ATTR_WARNINGS = "warnings"  # list of {"code", "message", "stage", ...}: what to check before trusting a result (stores/warn.py)
ATTR_HOST = "host"  # the machine that created the store
ATTR_INPUT_STORE = "input_store"  # the canonical store a job read (source_path names the instrument file)
ATTR_NORMALISATION = "normalisation"  # the fusion's dataset-wide min-max ranges (emfuse.pipeline.fusion.Normalisation)
ATTR_TIMING = "timing"  # list of runs: {"started", "host", "seconds": {stage: wall seconds}}; a resumed run adds one
ATTR_MAPS_FROM = "maps_from"  # where fused maps came from: stored maps, or integrated from the spectrum (windows)
ATTR_TILE_CHOICE = "tile_choice"  # how a fusion's --tile auto was chosen: tile, rule, free GPU bytes per task, model
ATTR_DEVICES = "devices"  # list of str: where a job's units ran ("cpu", "cuda:0"); a resumed run may add one
ATTR_IMAGE_KIND = "image_kind"  # what an image is ("haadf", or "image" when not known to be one: a lone TEM frame); a restored one also "movie"
#: ``units`` of values that are not counts (floats: scaled, gain-corrected or vendor-processed;
#: offset-subtracted integers)
ARBITRARY_UNITS = "a.u."

# Zarr settings used for every write and open (see ENVIRONMENT.md).
ZARR_KW = {"zarr_format": 3, "consolidated": False}

# Default chunking: spectrum images keep the whole energy axis in each chunk.
SPECTRUM_CHUNK_YX = 64
IMAGE_CHUNK_YX = 512
