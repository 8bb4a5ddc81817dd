"""Core ML packages on disk: written byte-identically, checked, and their manifest read back.

Everything here reads or rewrites a saved `.mlpackage` (no torch tracing): coremltools' import,
deterministic bytes for the spec and the package manifest, our manifest item with sha256 of
every file, and the check of a converted graph (inputs and outputs, allowed ops, rank, fp16).
Works on Linux: none of it needs a Mac.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instrument.coreml import (
    INPUTS,
    MANIFEST_AUTHOR,
    MANIFEST_NAME,
    OUTPUT,
    CoreMLError,
    read_manifest,
    shapes,
)

MAX_RANK = 5  # Core ML's limit on tensor rank
DATA_FILES = ("Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin")
_UUID_NAMESPACE = uuid.UUID("6f1c5a0e-93a4-4f5e-9d0b-1d3c2a7e5b10")  # fixed: deterministic item ids

# MIL ops the converter produces for this graph, all run by Core ML on the GPU and Neural Engine
# (macOS14: attention as matmul + softmax; macOS15: the fused scaled_dot_product_attention op).
# A new op appearing here after a diffusers or coremltools upgrade fails the conversion: check it
# runs where it should (Xcode's performance report) before adding it.
ALLOWED_OPS = frozenset({
    "abs", "add", "cast", "clip", "concat", "const", "expand_dims", "gelu", "layer_norm", "linear",
    "matmul", "mul", "real_div", "reduce_max", "reduce_mean", "reshape", "scaled_dot_product_attention",
    "silu", "slice_by_index", "softmax", "split", "sqrt", "square", "squeeze", "stack", "sub", "transpose",
})



def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- coremltools ----------------------------------------------------------------------------------
def import_coremltools() -> Any:
    """coremltools, imported quietly (off macOS it logs that its runtime is missing, which we know),
    its logger kept at WARNING (at INFO it logs every op and pass: thousands of lines)."""
    logger = logging.getLogger("coremltools")
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError as e:
        raise CoreMLError(f"coremltools cannot be imported ({e}): `pip install coremltools==9.0`") from e
    finally:
        logger.setLevel(logging.WARNING)
    return coremltools


def normalize_spec(package: Path) -> None:
    """Rewrite the model spec with protobuf's deterministic serialization (map fields in key order;
    coremltools' default order varies from run to run), so identical conversions give identical bytes."""
    from coremltools.proto import Model_pb2

    path = package / DATA_FILES[0]
    spec = Model_pb2.Model()
    spec.ParseFromString(path.read_bytes())
    path.write_bytes(spec.SerializeToString(deterministic=True))


def normalize_package_manifest(package: Path) -> None:
    """Give the package's Manifest.json item ids derived from the item paths (coremltools draws random
    UUIDs), so identical conversions give identical bytes."""
    path = package / "Manifest.json"
    data = json.loads(path.read_text())
    items = data["itemInfoEntries"]
    new_ids = {old: str(uuid.uuid5(_UUID_NAMESPACE, f"{v['author']}/{v['path']}")) for old, v in items.items()}
    data["itemInfoEntries"] = {new_ids[k]: v for k, v in items.items()}
    data["rootModelIdentifier"] = new_ids[data["rootModelIdentifier"]]
    path.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")


def add_manifest(package: Path, manifest: dict[str, Any]) -> None:
    from coremltools.libmodelpackage import ModelPackage

    staging = package.with_name(package.name + ".manifest")
    staging.mkdir(exist_ok=True)
    try:
        item = staging / MANIFEST_NAME
        item.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        pkg = ModelPackage(str(package))
        pkg.addItem(str(item), MANIFEST_NAME, MANIFEST_AUTHOR, "Endless: how this package was made, sha256")
        del pkg  # the C++ side writes Manifest.json when it goes
        gc.collect()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    normalize_package_manifest(package)


# -- checking a package ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PackageReport:
    """What a converted package holds, read from its spec (no Mac needed)."""

    inputs: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
    outputs: dict[str, tuple[tuple[int, ...], str]]
    opset: str  # e.g. "CoreML8" (macOS15)
    ops: dict[str, int]  # MIL op type -> count, nested blocks included
    max_rank: int  # the largest rank of any op output
    compute_dtypes: dict[str, int]  # output dtype of every non-const op -> count
    const_dtypes: dict[str, int]  # dtype of every float const (weights, tables) -> count
    fp32_ops: tuple[str, ...]  # non-const ops with an fp32 output (only the output cast expected)
    metadata: dict[str, str] = field(default_factory=dict)


def _array_type(feature: Any) -> tuple[tuple[int, ...], str]:
    from coremltools.proto import FeatureTypes_pb2

    arr = feature.type.multiArrayType
    return tuple(int(d) for d in arr.shape), FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType)


def _walk(operations: Iterable[Any]) -> Iterable[Any]:
    for op in operations:
        yield op
        for block in op.blocks:
            yield from _walk(block.operations)


def inspect_package(package: Path) -> PackageReport:
    """Read a package's spec: inputs, outputs, ops, ranks and dtypes."""
    ct = import_coremltools()
    from coremltools.proto import MIL_pb2

    spec = ct.utils.load_spec(str(package))
    fn = spec.mlProgram.functions["main"]
    opset = fn.opset
    ops: Counter[str] = Counter()
    compute: Counter[str] = Counter()
    consts: Counter[str] = Counter()
    fp32_ops: list[str] = []
    max_rank = 0
    name = MIL_pb2.DataType.Name
    for op in _walk(fn.block_specializations[opset].operations):
        ops[op.type] += 1
        for out in op.outputs:
            tensor = out.type.tensorType
            max_rank = max(max_rank, int(tensor.rank))
            dtype = name(tensor.dataType)
            if op.type == "const":
                if dtype.startswith("FLOAT"):
                    consts[dtype] += 1
                continue
            compute[dtype] += 1
            if dtype == "FLOAT32":
                fp32_ops.append(f"{op.type}:{out.name}")
    return PackageReport(
        inputs={f.name: _array_type(f) for f in spec.description.input},
        outputs={f.name: _array_type(f) for f in spec.description.output},
        opset=opset,
        ops=dict(sorted(ops.items())),
        max_rank=max_rank,
        compute_dtypes=dict(compute),
        const_dtypes=dict(consts),
        fp32_ops=tuple(fp32_ops),
        metadata=dict(spec.description.metadata.userDefined),
    )


def package_problems(report: PackageReport, audio_seq_len: int, text_dim: int) -> list[str]:
    """What is wrong with a converted package (empty when nothing): shapes, ops, rank, precision."""
    want = shapes(audio_seq_len, text_dim)
    problems = []
    for name in INPUTS:
        if report.inputs.get(name) != (want[name], "FLOAT32"):
            problems.append(f"input {name}: {report.inputs.get(name)}, expected {(want[name], 'FLOAT32')}")
    if set(report.inputs) != set(INPUTS):
        problems.append(f"inputs {sorted(report.inputs)}, expected {sorted(INPUTS)}")
    if report.outputs != {OUTPUT: (want[OUTPUT], "FLOAT32")}:
        problems.append(f"outputs {report.outputs}, expected {OUTPUT} {want[OUTPUT]} FLOAT32")
    unknown = sorted(set(report.ops) - ALLOWED_OPS)
    if unknown:
        problems.append(f"ops outside the allowlist: {', '.join(unknown)}")
    if report.max_rank > MAX_RANK:
        problems.append(f"a tensor of rank {report.max_rank}; Core ML allows at most {MAX_RANK}")
    if set(report.const_dtypes) - {"FLOAT16"}:
        problems.append(f"float constants of types {report.const_dtypes}; expected FLOAT16 only")
    if report.fp32_ops != (f"cast:{OUTPUT}",):
        problems.append(f"fp32 compute: {list(report.fp32_ops)[:5]}; expected only the cast to {OUTPUT}")
    return problems


# -- up to date ----------------------------------------------------------------------------------
def package_digest(package: Path) -> dict[str, str]:
    """sha256 of the package's model and weight files."""
    return {f: sha256_file(package / f) for f in DATA_FILES}


def up_to_date(package: Path, wanted: dict[str, Any]) -> bool:
    """Whether `package` exists, was built from the same source, converter, target and shapes, and
    its files still have the hashes its manifest lists."""
    manifest = read_manifest(package)
    if manifest is None or any(manifest.get(k) != v for k, v in wanted.items()):
        return False
    try:
        return bool(manifest.get("files") == package_digest(package))
    except OSError:
        return False
