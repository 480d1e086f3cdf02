"""Read the published r_em Keras SavedModels without TensorFlow.

A Keras SavedModel directory holds three things we need:

- ``keras_metadata.pb``: a protobuf with one record per saved object; the root record's
  metadata is JSON text with the Keras model configuration (layers, their settings and
  their inputs), and each ``root.layer_with_weights-K`` record names the layer that owns
  checkpoint slot ``K``;
- ``variables/variables.index``: a TensorFlow *tensor bundle* index, i.e. an uncompressed
  LevelDB table (sorted keys, prefix-compressed, in blocks with restart points, a footer
  with the index-block handle and a magic number) mapping checkpoint keys such as
  ``layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE`` to ``BundleEntryProto``
  records (dtype, shape, shard, offset, size, crc32c);
- ``variables/variables.data-00000-of-00001``: the raw little-endian tensors.

The few protobuf fields needed are decoded by hand (a varint reader), so neither
TensorFlow nor protobuf is required. Every size, offset and checksum is checked: a
damaged or truncated file raises :class:`BundleError` naming the file and the fix.

Examples
--------
>>> from emfuse.pipeline.restore.weights import read_bundle  # doctest: +SKIP
>>> tensors = read_bundle("sfr_hrstem/variables/variables")  # doctest: +SKIP
>>> tensors["layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"].shape  # doctest: +SKIP
(3, 3, 1, 64)
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmfuseError
from .cgrdn import CGRDNConfig, keras_layers, torch_names

#: What to do about a damaged bundle (the only bundles we read come from tk-r-em).
REINSTALL_HINT = (
    "reinstall the package that ships it, e.g. "
    "pip install --force-reinstall --no-cache-dir 'tk-r-em==1.0.4'"
)


class BundleError(EmfuseError, ValueError):
    """A tensor bundle or SavedModel file that cannot be read; the message names file and fix."""


def _fail(path: Path | str, what: str) -> BundleError:
    return BundleError(f"{path}: {what}; the file is damaged or truncated: {REINSTALL_HINT}")


# --- protobuf wire format ---------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; return ``(value, next position)``."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield ``(field number, value)`` of a protobuf message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):  # fixed64 / fixed32, kept as raw little-endian bytes
            width = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + width], pos + width
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf field")
        yield field, value


# --- checksums --------------------------------------------------------------------------


def _crc32c(data: bytes | memoryview) -> int:
    # google-crc32c is a dependency of zarr (and of ours); its C extension does 28 MB in ms.
    import google_crc32c

    return google_crc32c.value(bytes(data))


def _unmask(masked: int) -> int:
    """Undo LevelDB/TensorFlow's crc masking (rotate right by 15 after subtracting a constant)."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --- LevelDB table (the bundle index) ---------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic number


def _block_handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    # Each block is followed by a 1-byte compression type and a masked crc32c of block + type.
    end = offset + size + 5
    if end > len(data):
        raise _fail(path, f"block at {offset}+{size} runs past the end of the file ({len(data)} bytes)")
    block, kind = data[offset : offset + size], data[offset + size]
    if kind != 0:
        raise BundleError(f"{path}: block compressed with type {kind}; only uncompressed tables are supported")
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if _unmask(stored) != _crc32c(data[offset : offset + size + 1]):
        raise _fail(path, f"checksum mismatch in the block at byte {offset}")
    return block


def _block_entries(block: bytes, path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Yield the ``(key, value)`` pairs of one block (keys are prefix-compressed)."""
    if len(block) < 4:
        raise _fail(path, "block shorter than its restart count")
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise _fail(path, "restart array larger than its block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise _fail(path, "malformed block entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def read_table(path: str | Path) -> dict[str, bytes]:
    """All ``key -> value`` pairs of an uncompressed LevelDB-format table (a bundle index).

    Examples
    --------
    >>> entries = read_table("variables/variables.index")  # doctest: +SKIP
    >>> sorted(entries)[:2]  # doctest: +SKIP
    ['', '_CHECKPOINTABLE_OBJECT_GRAPH']
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _FOOTER_SIZE:
        raise _fail(path, f"only {len(data)} bytes, shorter than the table footer")
    footer = data[-_FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != _TABLE_MAGIC:
        raise _fail(path, "no table magic number at the end")
    try:
        _, _, pos = _block_handle(footer, 0)  # metaindex: filters only, not needed
        index_offset, index_size, _ = _block_handle(footer, pos)
        entries: dict[str, bytes] = {}
        index = _read_block(data, index_offset, index_size, path)
        for _, handle in _block_entries(index, path):
            offset, size, _ = _block_handle(handle, 0)
            for key, value in _block_entries(_read_block(data, offset, size, path), path):
                entries[key.decode("utf-8")] = value
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise _fail(path, f"cannot parse the table ({exc})") from exc
    return entries


# --- tensor bundle ------------------------------------------------------------------------

# TensorFlow DataType enum -> numpy little-endian dtype (the ones Keras weights use).
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 19: "<f2"}


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lies in the data shard (a decoded ``BundleEntryProto``)."""

    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None


def _parse_entry(value: bytes) -> BundleEntry:
    f: dict[str, Any] = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": None}
    for field, v in _fields(value):
        if field == 1:
            f["dtype"] = v
        elif field == 2:  # TensorShapeProto: repeated dim (field 2) {size (1)}
            dims = []
            for sub, dim in _fields(v):
                if sub == 2:
                    dims.append(next((s for k, s in _fields(dim) if k == 1), 0))
            f["shape"] = tuple(dims)
        elif field == 3:
            f["shard"] = v
        elif field == 4:
            f["offset"] = v
        elif field == 5:
            f["size"] = v
        elif field == 6:
            f["crc32c"] = struct.unpack("<I", v)[0]
        elif field == 7:
            raise ValueError("partitioned (sliced) tensors are not supported")
    return BundleEntry(**f)


def read_bundle_index(prefix: str | Path) -> dict[str, BundleEntry]:
    """The entries of the bundle ``PREFIX.index`` (the header record ``""`` is checked, not returned)."""
    path = Path(f"{prefix}.index")
    if not path.is_file():
        raise BundleError(f"{path}: no such file; {REINSTALL_HINT}")
    table = read_table(path)
    header = table.pop("", None)
    if header is None:
        raise _fail(path, "no bundle header record")
    fields = dict(_fields(header))
    if fields.get(1, 1) != 1 or fields.get(2, 0) != 0:
        raise BundleError(
            f"{path}: a bundle with {fields.get(1, 1)} shards, endianness {fields.get(2, 0)}; "
            "only single-shard little-endian bundles are supported"
        )
    try:
        return {key: _parse_entry(value) for key, value in table.items()}
    except ValueError as exc:
        raise _fail(path, f"cannot decode an entry ({exc})") from exc


def read_bundle(
    prefix: str | Path, keys: Iterable[str] | None = None, *, verify: bool = True
) -> dict[str, np.ndarray]:
    """Read tensors of the bundle ``PREFIX.index`` + ``PREFIX.data-00000-of-00001``.

    Parameters
    ----------
    prefix
        The bundle prefix, e.g. ``.../variables/variables``.
    keys
        Keys to read; default all numeric tensors (string tensors such as the object graph
        are skipped).
    verify
        Check each tensor's crc32c.

    Examples
    --------
    >>> w = read_bundle("variables/variables", ["layer_with_weights-0/bias/.ATTRIBUTES/VARIABLE_VALUE"])  # doctest: +SKIP
    >>> w["layer_with_weights-0/bias/.ATTRIBUTES/VARIABLE_VALUE"].dtype  # doctest: +SKIP
    dtype('float32')
    """
    entries = read_bundle_index(prefix)
    if keys is None:
        keys = [k for k, e in entries.items() if e.dtype in _DTYPES]
    data_path = Path(f"{prefix}.data-00000-of-00001")
    if not data_path.is_file():
        raise BundleError(f"{data_path}: no such file; {REINSTALL_HINT}")
    data = data_path.read_bytes()
    out = {}
    for key in keys:
        if key not in entries:
            raise KeyError(f"{key!r} is not in the bundle {prefix}.index")
        e = entries[key]
        if e.dtype not in _DTYPES:
            raise BundleError(f"{prefix}.index: {key!r} has TensorFlow dtype {e.dtype}, which is not supported")
        dtype = np.dtype(_DTYPES[e.dtype])
        if e.size != dtype.itemsize * int(np.prod(e.shape, dtype=np.int64)):
            raise _fail(f"{prefix}.index", f"{key!r}: {e.size} bytes for shape {e.shape}")
        if e.offset + e.size > len(data):
            raise _fail(data_path, f"{key!r} at {e.offset}+{e.size} runs past the end ({len(data)} bytes)")
        raw = data[e.offset : e.offset + e.size]
        if verify and e.crc32c is not None and _unmask(e.crc32c) != _crc32c(raw):
            raise _fail(data_path, f"checksum mismatch for {key!r}")
        out[key] = np.frombuffer(raw, dtype=dtype).reshape(e.shape).astype(dtype.newbyteorder("="))
    return out


# --- Keras SavedModel -----------------------------------------------------------------------


def read_keras_metadata(model_dir: str | Path) -> tuple[dict, dict[int, str]]:
    """The Keras model configuration and the layer name owning each checkpoint slot.

    Returns ``(config, slots)``: ``config`` is the functional model's ``config`` dict (keys
    ``layers``, ``input_layers``, ``output_layers``), ``slots[K]`` the name of the layer
    saved as ``layer_with_weights-K``.
    """
    path = Path(model_dir) / "keras_metadata.pb"
    if not path.is_file():
        raise BundleError(f"{path}: no such file; {REINSTALL_HINT}")
    config, slots = None, {}
    try:
        # KerasMetadata: repeated SavedObject nodes (field 1) {node_path (3), metadata (5)}
        for field, node in _fields(path.read_bytes()):
            if field != 1:
                continue
            rec = dict(_fields(node))
            node_path = rec.get(3, b"").decode("utf-8")
            if node_path == "root":
                config = json.loads(rec[5])["config"]
            elif m := re.fullmatch(r"root\.layer_with_weights-(\d+)", node_path):
                slots[int(m.group(1))] = json.loads(rec[5])["name"]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot parse the Keras metadata ({exc})") from exc
    if config is None or "layers" not in config:
        raise _fail(path, "no model configuration in the root record")
    return config, slots


def read_std_floor(model_dir: str | Path) -> float:
    """The lower bound on the per-image std in the published ``lay_r_em_pp`` layer.

    The custom layer's code is only in the serialised graph (``saved_model.pb``): it computes
    ``std = maximum(sqrt(variance), y)`` with ``y`` a float32 ``Const`` node
    ``gen_r_em_pp/Maximum/y``. This finds that NodeDef and decodes its value.
    """
    path = Path(model_dir) / "saved_model.pb"
    data = path.read_bytes() if path.is_file() else b""
    name = b"gen_r_em_pp/Maximum/y"
    start = data.find(b"\n" + bytes([len(name)]) + name + b"\x12\x05Const")
    if start < 0:
        raise _fail(path, "the standardisation layer's constant gen_r_em_pp/Maximum/y is missing")
    try:
        # NodeDef {name (1), op (2), attr (5): map entry {key (1), AttrValue (2)}}; AttrValue
        # tensor (8): TensorProto {dtype (1), float_val (5, packed)}. The NodeDef ends where the
        # next NodeDef (field 3 of FunctionDef) begins, so read fields until "value" is found.
        pos = start
        while pos < len(data):
            key, pos = _varint(data, pos)
            n, pos = _varint(data, pos)
            body, pos = data[pos : pos + n], pos + n
            if key >> 3 == 5:
                entry = dict(_fields(body))
                if entry.get(1) == b"value":
                    tensor = dict(_fields(dict(_fields(entry[2]))[8]))
                    if tensor.get(1) != 1:
                        break
                    # shortest decimal of the float32 (0.1, not 0.10000000149...): same float32
                    return float(str(np.frombuffer(tensor[5], "<f4")[0]))
    except (ValueError, KeyError, IndexError) as exc:
        raise _fail(path, f"cannot decode gen_r_em_pp/Maximum/y ({exc})") from exc
    raise _fail(path, "gen_r_em_pp/Maximum/y holds no float32 value")


def _layer_spec(layer: dict) -> dict:
    """The architecture-defining part of one Keras layer entry, in :func:`keras_layers` form."""
    cfg = layer["config"]
    nodes = layer.get("inbound_nodes") or [[]]
    spec = {
        "class_name": layer["class_name"],
        "name": layer["name"],
        "inbound": [(n[0], n[2]) for n in nodes[0]],
    }
    if layer["class_name"] in ("Conv2D", "Conv2DTranspose"):
        for k in ("filters", "padding", "activation", "use_bias", "groups"):
            spec[k] = cfg.get(k)
        for k in ("kernel_size", "strides", "dilation_rate"):
            spec[k] = tuple(cfg[k]["items"] if isinstance(cfg[k], dict) else cfg[k])
        if layer["class_name"] == "Conv2DTranspose":
            spec["output_padding"] = cfg.get("output_padding")
    elif layer["class_name"] == "Concatenate":
        spec["axis"] = cfg["axis"]
    elif layer["class_name"] == "Custom>lay_r_em_out":
        extra = nodes[0][0][3] if nodes[0] else {}
        spec["kwargs"] = {k: (v[0], v[2]) for k, v in sorted(extra.items())}
    return spec


def check_keras_config(config: dict, cfg: CGRDNConfig) -> None:
    """Raise :class:`BundleError` unless the Keras graph is exactly what :class:`CGRDN` computes."""
    actual = [_layer_spec(layer) for layer in config["layers"]]
    expected = keras_layers(cfg)
    if len(actual) != len(expected):
        raise BundleError(f"the Keras model has {len(actual)} layers, CGRDN{cfg} has {len(expected)}")
    for a, e in zip(actual, expected):
        if a != e:
            raise BundleError(f"Keras layer {a['name']!r} differs from CGRDN's: {a} != {e}")


def config_from_keras(config: dict, std_floor: float) -> CGRDNConfig:
    """Read the CGRDN hyper-parameters off the layer names and settings of the Keras model."""
    layers = {layer["name"]: layer["config"] for layer in config["layers"]}

    def count(pattern: str) -> int:
        return max((int(m.group(1)) for n in layers if (m := re.fullmatch(pattern, n))), default=0)

    try:
        fst, down = layers["gen_fst_0_conv"], layers["gen_down_spl_0_conv"]
        return CGRDNConfig(
            in_channels=config["layers"][0]["config"]["batch_input_shape"]["items"][-1],
            features=fst["filters"],
            growth=layers["gen_g_1_rdb_1_cpl_1_1_conv"]["filters"],
            groups=count(r"gen_g_(\d+)_add"),
            blocks=count(r"gen_g_1_rdb_(\d+)_add"),
            layers=count(r"gen_g_1_rdb_1_cpl_(\d+)_1_conv"),
            kernel_size=fst["kernel_size"]["items"][0],
            down_kernel=down["kernel_size"]["items"][0],
            scale=down["strides"]["items"][0],
            std_floor=std_floor,
        )
    except (KeyError, IndexError, TypeError) as exc:
        raise BundleError(f"not a CGRDN Keras model (missing {exc})") from exc


def convert_saved_model(model_dir: str | Path) -> tuple[CGRDNConfig, dict[str, np.ndarray]]:
    """Convert a published r_em SavedModel into a :class:`CGRDNConfig` and a torch state dict.

    The architecture is read off ``keras_metadata.pb`` and checked layer by layer (names,
    inputs, settings) against :func:`keras_layers`; checkpoint slot ``K`` is matched to its
    layer through the metadata and every tensor's shape is checked. Keras kernels
    ``(kh, kw, in, out)`` become torch ``(out, in, kh, kw)``; transposed-convolution kernels
    ``(kh, kw, out, in)`` become ``ConvTranspose2d`` weights ``(in, out, kh, kw)`` (both
    frameworks compute the adjoint of the same unflipped correlation).

    Examples
    --------
    >>> cfg, state = convert_saved_model(".../tk_r_em/models/sfr_hrstem")  # doctest: +SKIP
    >>> state["fst.weight"].shape  # doctest: +SKIP
    (64, 1, 3, 3)
    """
    model_dir = Path(model_dir)
    config, slots = read_keras_metadata(model_dir)
    cfg = config_from_keras(config, read_std_floor(model_dir))
    check_keras_config(config, cfg)

    names = torch_names(cfg)
    if sorted(slots.values()) != sorted(names):
        raise BundleError(f"{model_dir}: the layers with weights are not the CGRDN's convolutions")
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    keys = [f"layer_with_weights-{k}/{w}{suffix}" for k in slots for w in ("kernel", "bias")]
    tensors = read_bundle(model_dir / "variables" / "variables", keys)
    state = {}
    for k, layer in slots.items():
        kernel = tensors[f"layer_with_weights-{k}/kernel{suffix}"]
        # One permutation serves both: (kh, kw, in, out) -> (out, in, kh, kw) for Conv2D and
        # (kh, kw, out, in) -> (in, out, kh, kw) for Conv2DTranspose.
        state[f"{names[layer]}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        state[f"{names[layer]}.bias"] = tensors[f"layer_with_weights-{k}/bias{suffix}"]

    import torch

    from .cgrdn import CGRDN

    with torch.device("meta"):  # shapes only, no memory
        expected = {k: tuple(v.shape) for k, v in CGRDN(cfg).state_dict().items()}
    got = {k: v.shape for k, v in state.items()}
    if got != expected:
        bad = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise BundleError(f"{model_dir}: weights do not fit CGRDN{cfg}: {bad[:3]} ...")
    return cfg, state
