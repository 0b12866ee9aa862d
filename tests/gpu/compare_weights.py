"""compare_weights.py A B TOL: two safetensors files of f32 tensors hold the same names and
shapes, and every tensor of A is within TOL of B's times B's largest absolute value. Standard
library only, so that the GPU check needs no numpy or safetensors package."""

import json
import struct
import sys
from array import array


def load(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {meta['dtype']}, not F32")
        start, end = meta["data_offsets"]
        values = array("f")
        values.frombytes(data[start:end])
        if sys.byteorder != "little":
            values.byteswap()
        tensors[name] = (meta["shape"], values)
    return tensors


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
    if a.keys() != b.keys():
        sys.exit(f"different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    worst, worst_name = 0.0, None
    for name, (shape, values) in b.items():
        other_shape, other = a[name]
        if other_shape != shape:
            sys.exit(f"{name}: shape {other_shape} against {shape}")
        scale = max((abs(v) for v in values), default=0.0) or 1.0
        diff = max((abs(x - y) for x, y in zip(other, values)), default=0.0) / scale
        if diff > worst:
            worst, worst_name = diff, name
    print(f"{len(b)} tensors; largest difference {worst:.3e} of the tensor's largest value ({worst_name or '-'})")
    sys.exit(0 if worst <= tol else 1)


main()
