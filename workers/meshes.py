"""Deterministic 3D assets for the simulated image-to-3D model (``POST /v1/3d/generations``): a glTF
2.0 binary (GLB) that any glTF viewer opens: one mesh, an icosphere subdivided by the requested
``resolution`` and pushed in and out by bumps the request's image reference and ``seed`` choose,
with per-vertex normals and colours.

The simulated asset is not textured at ``texture_size`` (a 2048-pixel texture would make a result of
megabytes on the jobs topic); its colours are per vertex, and the texture size, decimation target and
remesh flag are recorded in the asset's ``extras`` so that a client sees what it asked for.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

THREE_D = "/v1/3d/generations"
CONTENT_TYPE = "model/gltf-binary"
# Subdivisions of the icosahedron per requested resolution: 320, 1,280 and 5,120 triangles, so the
# largest asset stays about 100 KB (it rides in the job's result on the log).
subdivisions_by_resolution = {"512": 2, "1024": 3, "1536": 4}
_glb_magic, _glb_version = 0x46546C67, 2  # "glTF"
_json_chunk, _bin_chunk = 0x4E4F534A, 0x004E4942  # "JSON", "BIN\0"
_float, _unsigned_short, _unsigned_int = 5126, 5123, 5125
_array_buffer, _element_array_buffer = 34962, 34963

Vertex = tuple[float, float, float]


def _icosahedron() -> tuple[list[Vertex], list[tuple[int, int, int]]]:
    t = (1 + math.sqrt(5)) / 2
    corners: list[Vertex] = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t)]
    corners += [(0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2)]
    faces += [(10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5)]
    faces += [(2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    return [_unit(x, y, z) for x, y, z in corners], faces


def _unit(x: float, y: float, z: float) -> Vertex:
    length = math.sqrt(x * x + y * y + z * z)
    return x / length, y / length, z / length


def _midpoint(vertices: list[Vertex], midpoints: dict[tuple[int, int], int], a: int, b: int) -> int:
    """The index of the edge (a, b)'s midpoint on the unit sphere, added once and shared by both faces."""
    key = (min(a, b), max(a, b))
    if key not in midpoints:
        (ax, ay, az), (bx, by, bz) = vertices[a], vertices[b]
        vertices.append(_unit((ax + bx) / 2, (ay + by) / 2, (az + bz) / 2))
        midpoints[key] = len(vertices) - 1
    return midpoints[key]


def icosphere(subdivisions: int) -> tuple[list[Vertex], list[tuple[int, int, int]]]:
    """A unit sphere of 20 x 4^subdivisions triangles."""
    vertices, faces = _icosahedron()
    for _ in range(subdivisions):
        midpoints: dict[tuple[int, int], int] = {}
        split = []
        for a, b, c in faces:
            ab, bc, ca = (_midpoint(vertices, midpoints, *edge) for edge in ((a, b), (b, c), (c, a)))
            split += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = split
    return vertices, faces


def _bumps(seed: bytes) -> list[tuple[Vertex, float]]:
    """Five bumps (a direction and a height between -0.25 and 0.25) chosen by the seed."""
    found = []
    for index in range(5):
        digest = hashlib.sha256(seed + bytes([index])).digest()
        x, y, z = (digest[i] / 127.5 - 1 for i in range(3))
        found.append((_unit(x or 0.01, y, z), (digest[3] / 255 - 0.5) / 2))
    return found


def _shaped(vertices: list[Vertex], seed: bytes) -> list[Vertex]:
    bumps = _bumps(seed)
    shaped = []
    for x, y, z in vertices:
        radius = 1.0
        for (bx, by, bz), height in bumps:
            closeness = max(0.0, x * bx + y * by + z * bz)
            radius += height * closeness**4
        shaped.append((x * radius, y * radius, z * radius))
    return shaped


def _normals(vertices: list[Vertex], faces: list[tuple[int, int, int]]) -> list[Vertex]:
    sums = [[0.0, 0.0, 0.0] for _ in vertices]
    for a, b, c in faces:
        (ax, ay, az), (bx, by, bz), (cx, cy, cz) = vertices[a], vertices[b], vertices[c]
        ux, uy, uz, vx, vy, vz = bx - ax, by - ay, bz - az, cx - ax, cy - ay, cz - az
        normal = (uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx)
        for corner in (a, b, c):
            for axis in range(3):
                sums[corner][axis] += normal[axis]
    return [_unit(*total) if any(total) else (0.0, 1.0, 0.0) for total in sums]


def _colors(vertices: list[Vertex], seed: bytes) -> list[tuple[float, float, float, float]]:
    base = [seed[i] / 255 for i in range(3)]
    return [
        (0.3 + 0.5 * base[0] * (y + 1) / 2, 0.3 + 0.5 * base[1] * (z + 1) / 2, 0.3 + 0.5 * base[2] * (x + 1) / 2, 1.0)
        for x, y, z in vertices
    ]


def _padded(data: bytes, pad: bytes) -> bytes:
    return data + pad * (-len(data) % 4)


def glb_asset(resolution: str, seed: bytes, extras: dict[str, Any]) -> tuple[bytes, int]:
    """The GLB of a generation (the same inputs always give the same bytes), and its triangle count."""
    vertices, faces = icosphere(subdivisions_by_resolution[resolution])
    shaped = _shaped(vertices, seed)
    normals = _normals(shaped, faces)
    colors = _colors(vertices, seed)
    wide = len(shaped) > 65_535
    index_format, index_type = ("<I", _unsigned_int) if wide else ("<H", _unsigned_short)
    positions = b"".join(struct.pack("<3f", *v) for v in shaped)
    normal_bytes = b"".join(struct.pack("<3f", *n) for n in normals)
    color_bytes = b"".join(struct.pack("<4f", *c) for c in colors)
    indices = _padded(b"".join(struct.pack(index_format, i) for face in faces for i in face), b"\0")
    views, offset = [], 0
    for data, target in ((positions, _array_buffer), (normal_bytes, _array_buffer), (color_bytes, _array_buffer)):
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data), "target": target})
        offset += len(data)
    index_length = len(faces) * 3 * (4 if wide else 2)
    views.append({"buffer": 0, "byteOffset": offset, "byteLength": index_length, "target": _element_array_buffer})
    binary = positions + normal_bytes + color_bytes + indices
    # POSITION needs its bounds (glTF 2.0, 3.7.2.1), rounded as the float32 values stored.
    stored = [struct.unpack("<3f", struct.pack("<3f", *v)) for v in shaped]
    low = [min(v[axis] for v in stored) for axis in range(3)]
    high = [max(v[axis] for v in stored) for axis in range(3)]
    count = len(shaped)
    document = {
        "asset": {"version": "2.0", "generator": "tollgate simulated trellis-2-4b", "extras": extras},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "asset"}],
        "meshes": [
            {
                "name": "asset",
                "primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1, "COLOR_0": 2}, "indices": 3, "mode": 4}],
            }
        ],
        "accessors": [
            {"bufferView": 0, "componentType": _float, "count": count, "type": "VEC3", "min": low, "max": high},
            {"bufferView": 1, "componentType": _float, "count": count, "type": "VEC3"},
            {"bufferView": 2, "componentType": _float, "count": count, "type": "VEC4"},
            {"bufferView": 3, "componentType": index_type, "count": len(faces) * 3, "type": "SCALAR"},
        ],
        "bufferViews": views,
        "buffers": [{"byteLength": len(binary)}],
    }
    json_bytes = _padded(json.dumps(document, separators=(",", ":"), sort_keys=True).encode(), b" ")
    total = 12 + 8 + len(json_bytes) + 8 + len(binary)
    glb = struct.pack("<III", _glb_magic, _glb_version, total)
    glb += struct.pack("<II", len(json_bytes), _json_chunk) + json_bytes
    glb += struct.pack("<II", len(binary), _bin_chunk) + binary
    return glb, len(faces)


def read_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(the glTF JSON, the binary chunk) of a GLB, checking its header and chunk layout; a
    ``ValueError`` says what is wrong. For tests and for anyone reading a result back."""
    if len(data) < 20:
        raise ValueError("shorter than a GLB header")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != _glb_magic or version != _glb_version or length != len(data):
        raise ValueError("not a glTF 2.0 binary (magic, version or length)")
    json_length, kind = struct.unpack_from("<II", data, 12)
    if kind != _json_chunk or json_length % 4:
        raise ValueError("the first chunk is not a 4-byte aligned JSON chunk")
    document: dict[str, Any] = json.loads(data[20 : 20 + json_length])
    rest = 20 + json_length
    if rest == len(data):
        return document, b""
    bin_length, kind = struct.unpack_from("<II", data, rest)
    if kind != _bin_chunk or rest + 8 + bin_length != len(data):
        raise ValueError("the second chunk is not the BIN chunk, or its length is wrong")
    return document, data[rest + 8 :]
