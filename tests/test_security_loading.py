"""Issue 15, loading: checkpoints from the internet are hostile.

Every attack file is built here by generator code (nothing binary is committed):
code hidden in checkpoints (TorchScript droppers, torch.export programs calling file
operators, Python smuggled into a program's symbolic sizes and guards), zip bombs,
special files, bad API arguments and noisy warnings. Each test fails without its fix.
"""

from __future__ import annotations

import builtins
import copy
import errno
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Tuple

import pytest
import torch
from torch import nn

import armetrics as am
from armetrics import export_check, safeio
from armetrics.errors import ArmetricsError, LoadError, UnsafeCodeError
from armetrics_testkit import TINY_ARCH

ARCH = TINY_ARCH
ROOT = Path(__file__).resolve().parents[1]


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg, msg
    return msg


# ============================================================ code in checkpoints
class _ForwardDropper(nn.Module):
    """TorchScript whose forward writes a file (torch.from_file with shared=True)."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x):
        t = torch.from_file(self.target, True, 2, dtype=torch.uint8)
        t.copy_(torch.tensor([104, 105], dtype=torch.uint8))
        return x + t.sum() * 0


class _SetstateDropper(nn.Module):
    """TorchScript whose __setstate__ writes a file: it runs inside torch.jit.load."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        t = torch.from_file(state[0], True, 2, dtype=torch.uint8)
        t.copy_(torch.tensor([104, 105], dtype=torch.uint8))
        self.target = self.target + str(int(t.sum()))

    def forward(self, x):
        return x


def _script(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.mark.parametrize("dropper", [_ForwardDropper, _SetstateDropper])
def test_torchscript_is_refused_before_jit_load(tmp_path, monkeypatch, dropper):
    target = tmp_path / "pwned"
    p = _script(dropper(str(target)), tmp_path / "model.pt")
    assert not target.exists()

    def no_jit_load(*_a, **_k):
        raise AssertionError("torch.jit.load ran on an untrusted TorchScript archive")

    with monkeypatch.context() as m:
        m.setattr(torch.jit, "load", no_jit_load)
        with pytest.raises(UnsafeCodeError) as err:
            am.load_model(p)
    msg = one_line_error(err)
    assert "TorchScript" in msg and "code" in msg and "--trust-code" in msg and "--arch" in msg
    with pytest.raises(UnsafeCodeError):
        am.load_model(p, arch=ARCH)  # an --arch does not make the archive weights
    assert not target.exists(), "the TorchScript payload ran"


def test_torchscript_loads_when_trusted(tmp_path):
    target = tmp_path / "pwned"
    p = _script(_ForwardDropper(str(target)), tmp_path / "model.pt")
    for kwargs in ({"trust_code": True}, {"trust_pickle": True}):  # --trust-pickle is an alias
        m = am.load_model(p, **kwargs)
        assert isinstance(m, torch.jit.ScriptModule)
        assert m.armetrics_info.format == "torchscript"
    assert not target.exists()  # loaded, never called


# ---------------------------------------------------------------- torch.export programs
class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x[: x.shape[0] // 2]) * 2


class WithCond(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda v: self.lin(v).relu(), lambda v: v * 2, (x,))


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """Exported archives: a small CNN (static), a dynamic-batch model (symbolic sizes
    and a guard), a model with a torch.cond subgraph; and the CNN's eager model."""
    root = tmp_path_factory.mktemp("pt2")
    torch.manual_seed(0)
    cnn = SmallCNN().eval()
    with torch.no_grad():
        cnn.bn.running_mean.uniform_(-0.5, 0.5)
        cnn.bn.running_var.uniform_(0.5, 2.0)
    out = {"cnn_model": cnn}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(cnn, (torch.rand(2, 3, 8, 8),)), str(root / "cnn.pt2"))
        batch = torch.export.Dim("b", min=2, max=64)
        torch.export.save(torch.export.export(TwoInputs().eval(), (torch.rand(8, 3),),
                                              dynamic_shapes=({0: 2 * batch},)), str(root / "dyn.pt2"))
        torch.export.save(torch.export.export(WithCond().eval(), (torch.rand(2, 4),)), str(root / "cond.pt2"))
    out.update({k: root / f"{k}.pt2" for k in ("cnn", "dyn", "cond")})
    return out


def _edit_program(good: Path, evil: Path, edit) -> Path:
    """Copy a .pt2, passing its program JSON (models/*.json) through ``edit(doc)``."""
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if "/models/" in item.filename and item.filename.endswith(".json"):
                doc = json.loads(data)
                edit(doc)
                data = json.dumps(doc).encode()
            zout.writestr(item, data)
    return evil


def _add_from_file(target: Path):
    """The edit an attacker makes: a node ``aten.from_file(target, shared=True)`` whose
    (all-zero) sum is added to the logits, so the graph writes ``target`` when called."""

    def edit(doc):
        g = doc["graph_module"]["graph"]
        out = g["outputs"][0]["as_tensor"]["name"]

        def meta(sizes):
            m = copy.deepcopy(g["tensor_values"][out])
            m["sizes"] = [{"as_int": s} for s in sizes]
            m["strides"] = [{"as_int": 1} for _ in sizes]
            return m

        def arg(name, value, kind=1):
            return {"name": name, "arg": value, "kind": kind}

        g["tensor_values"].update(pw=meta([4]), pw_sum=meta([]), pw_out=copy.deepcopy(g["tensor_values"][out]))
        g["nodes"].insert(0, {"target": "torch.ops.aten.from_file.default", "name": "pw", "metadata": {},
                              "inputs": [arg("filename", {"as_string": str(target)}), arg("shared", {"as_bool": True}),
                                         arg("size", {"as_int": 4}), arg("dtype", {"as_scalar_type": 7}, 2)],
                              "outputs": [{"as_tensor": {"name": "pw"}}]})
        g["nodes"].append({"target": "torch.ops.aten.sum.default", "name": "pw_sum", "metadata": {},
                           "inputs": [arg("self", {"as_tensor": {"name": "pw"}})],
                           "outputs": [{"as_tensor": {"name": "pw_sum"}}]})
        g["nodes"].append({"target": "torch.ops.aten.add.Tensor", "name": "pw_out", "metadata": {},
                           "inputs": [arg("self", {"as_tensor": {"name": out}}), arg("other", {"as_tensor": {"name": "pw_sum"}})],
                           "outputs": [{"as_tensor": {"name": "pw_out"}}]})
        g["outputs"] = [{"as_tensor": {"name": "pw_out"}}]
        doc["graph_module"]["signature"]["output_specs"] = [{"user_output": {"arg": {"as_tensor": {"name": "pw_out"}}}}]

    return edit


def test_export_graph_writing_a_file_is_refused(tmp_path, programs):
    target = tmp_path / "pwned"
    evil = _edit_program(programs["cnn"], tmp_path / "evil.pt2", _add_from_file(target))
    with pytest.raises(UnsafeCodeError) as err:
        am.load_model(evil)
    msg = one_line_error(err)
    assert "from_file" in msg and "--trust-code" in msg
    assert not target.exists()
    # the payload is real: trusted, the program loads and calling it writes the file
    m = am.load_model(evil, trust_code=True)
    assert not target.exists()
    m(torch.rand(2, 3, 8, 8))
    assert target.exists()


def test_loaded_graph_is_walked_too(tmp_path, programs):
    """The second layer: the graph torch.export.load built is checked node by node
    (and a program built in memory, never serialized, is refused the same way)."""
    target = tmp_path / "pwned"
    evil = _edit_program(programs["cnn"], tmp_path / "evil.pt2", _add_from_file(target))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.load(str(evil))
    with pytest.raises(UnsafeCodeError, match="from_file"):
        export_check.check_exported_program(evil, program)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        good = torch.export.load(str(programs["cond"]))
    export_check.check_exported_program(programs["cond"], good)  # cond and its subgraphs pass
    for node in good.graph_module.true_graph_0.graph.nodes:  # a nested subgraph is walked
        if node.op == "call_function":
            node.target = torch.ops.aten.from_file.default
            break
    with pytest.raises(UnsafeCodeError, match="from_file"):
        export_check.check_exported_program(programs["cond"], good)
    assert not target.exists()


@pytest.mark.parametrize("target,named", [
    ("torch.ops.aten.save.default", "save"),  # TorchScript's file writer, an aten op
    ("torch.ops.mylib.evil.default", "mylib"),  # a custom namespace
    ("torch.save", "torch.save"),  # a Python function the deserializer would resolve
    ("builtins.exec", "builtins.exec"),
    ("torch.ops.higher_order.triton_kernel_wrapper_functional", "triton"),
])
def test_export_targets_outside_the_allow_list(tmp_path, programs, target, named):
    def edit(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = target

    evil = _edit_program(programs["cnn"], tmp_path / "evil.pt2", edit)
    with pytest.raises(UnsafeCodeError) as err:
        am.load_model(evil)
    msg = one_line_error(err)
    assert named in msg and "--trust-code" in msg


def test_export_symbolic_size_smuggling_python_is_refused(tmp_path, programs):
    """torch.export.load hands every symbolic size to sympy.sympify, i.e. eval: a size
    expression can run any Python while the archive is being loaded."""
    target = tmp_path / "pwned"

    def edit(doc):
        g = doc["graph_module"]["graph"]
        sizes = next(v["sizes"] for v in g["tensor_values"].values() if any("as_expr" in s for s in v["sizes"]))
        expr = next(s for s in sizes if "as_expr" in s)["as_expr"]
        expr["expr_str"] = f"{expr['expr_str']} + 0*len(str(open({str(target)!r}, 'w')))"

    evil = _edit_program(programs["dyn"], tmp_path / "evil.pt2", edit)
    with pytest.raises(UnsafeCodeError) as err:
        am.load_model(evil)
    msg = one_line_error(err)
    assert "symbolic size" in msg and "open" in msg
    assert not target.exists(), "the symbolic size ran Python at load time"


def test_export_guard_smuggling_python_is_refused(tmp_path, programs):
    """Guards are pasted into Python source that runs at every call."""
    target = tmp_path / "pwned"

    def edit(doc):
        doc["guards_code"] = [f"open({str(target)!r}, 'w').close() is None"]

    evil = _edit_program(programs["cnn"], tmp_path / "evil.pt2", edit)
    with pytest.raises(UnsafeCodeError, match="guard"):
        am.load_model(evil)
    m = am.load_model(evil, trust_code=True)  # the payload is real
    m(torch.rand(2, 3, 8, 8))
    assert target.exists()


@pytest.mark.parametrize("where", ["forward_arg_names", "in_spec", "node_name"])
def test_export_names_that_become_source_code_are_checked(tmp_path, programs, where):
    """Input names and pytree keys are pasted unquoted into the generated forward."""
    bad = "x=__import__('os').system('true')"

    def edit(doc):
        gm = doc["graph_module"]
        sig = gm["module_call_graph"][0]["signature"]
        if where == "forward_arg_names":
            sig["forward_arg_names"] = [bad]
        elif where == "in_spec":
            spec = json.loads(sig["in_spec"])
            spec[1]["children_spec"][1]["context"] = json.dumps([bad])
            sig["in_spec"] = json.dumps(spec)
        else:
            gm["graph"]["nodes"][0]["name"] = bad

    evil = _edit_program(programs["cnn"], tmp_path / "evil.pt2", edit)
    with pytest.raises(UnsafeCodeError) as err:
        am.load_model(evil)
    assert "__import__" in one_line_error(err)


@pytest.mark.parametrize("member", ["data/aotinductor/model/model.so", "data/constants/custom_obj_0",
                                    "serialized_exported_program.json"])
def test_export_members_torch_would_run(tmp_path, programs, member):
    """AOTInductor libraries (loaded with dlopen), pickled custom objects and the legacy
    format torch falls back to are refused before torch.export.load."""
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(programs["cnn"]) as zin, zipfile.ZipFile(evil, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            zout.writestr(item, zin.read(item.filename))
        zout.writestr(f"{root}/{member}", b"\x7fELF not really")
    with pytest.raises(UnsafeCodeError) as err:
        am.load_model(evil)
    assert member.rsplit("/", 1)[-1] in one_line_error(err)


@pytest.mark.parametrize("name", ["cnn", "dyn", "cond"])
def test_normal_exported_programs_still_load(programs, name):
    m = am.load_model(programs[name])
    if name == "cnn":
        x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.allclose(m(x), programs["cnn_model"](x), atol=1e-6)
        assert m.armetrics_info.format == "export"


def test_export_allow_list_on_real_architectures():
    """No false alarms on common layers (residual blocks, attention, norms, pooling,
    upsampling): every op torch.export emits for them is allowed; no prims appear."""
    import torchvision

    class Misc(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(12)
            self.attn = nn.MultiheadAttention(12, 2, batch_first=True)
            self.up = nn.Upsample(scale_factor=2, mode="bilinear")

        def forward(self, x):
            y = torch.nn.functional.gelu(self.up(x)).flatten(2)[:, :, :12]
            y = self.ln(y)
            return torch.softmax(self.attn(y, y, y)[0], -1).amax(1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model in (torchvision.models.resnet18(num_classes=10), Misc()):
            ep = torch.export.export(model.eval(), (torch.rand(2, 3, 16, 16),))
            export_check.check_exported_program("model.pt2", ep)
            buf = io.BytesIO()
            torch.export.save(ep, buf)
            export_check.check_export_archive("model.pt2", buf)


# ============================================================ bombs
def _deflate_zeros(n_mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``n_mib`` MiB of zeros built from one repeated block, and
    its CRC-32 (a few MB, built in a fraction of a second)."""
    chunk = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # full flush: blocks are independent
    crc = 0
    for _ in range(n_mib):
        crc = zlib.crc32(chunk, crc)
    return block * n_mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH), crc


def _zip(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip from (name, stored bytes, method, crc, declared size) written by hand."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size in members:
        n = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(n), 0) + n + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    start = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0)
    return bytes(out)


def _pickle_bomb(n_mib: int) -> bytes:
    data, crc = _deflate_zeros(n_mib)
    return _zip([("archive/data.pkl", data, zipfile.ZIP_DEFLATED, crc, n_mib << 20),
                 ("archive/version", b"3\n", zipfile.ZIP_STORED, zlib.crc32(b"3\n"), 2)])


def test_pickle_bomb_is_refused_before_inflating(tmp_path):
    """A 1.6 MB .pt whose data.pkl inflates to 1.5 GiB: refused from the zip directory,
    with memory flat (torch would allocate the 1.5 GiB, then fail)."""
    p = tmp_path / "bomb.pt"
    p.write_bytes(_pickle_bomb(1536))
    assert p.stat().st_size < 2_000_000
    code = textwrap.dedent(f"""
        import resource, sys, time
        import armetrics.loading as L
        from armetrics.errors import LoadError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.time()
        try:
            L.load_model({str(p)!r}, arch={ARCH!r})
        except LoadError as exc:
            print("ERROR", exc)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("GROWN_KB", grown, "SECONDS", time.time() - t)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = proc.stdout.splitlines()
    err = next((line for line in lines if line.startswith("ERROR ")), proc.stdout + proc.stderr)
    assert "data.pkl" in err and str(1536 << 20) in err and "download or save it again" in err, err
    grown_kb, seconds = int(lines[-1].split()[1]), float(lines[-1].split()[3])
    assert grown_kb < 100_000, f"loading grew the process by {grown_kb} KB"
    assert seconds < 5


def _patch_central(data: bytes, suffix: str, *, size: int | None = None) -> bytes:
    """Rewrite the declared uncompressed size of the central-directory entry whose name
    ends with ``suffix`` (what an attacker edits; the local header is left alone)."""
    buf = bytearray(data)
    i = buf.find(b"PK\x01\x02")
    while i >= 0:
        nlen, elen, clen = struct.unpack_from("<HHH", buf, i + 28)
        name = bytes(buf[i + 46:i + 46 + nlen]).decode()
        if name.endswith(suffix):
            struct.pack_into("<I", buf, i + 24, size)
            return bytes(buf)
        i = buf.find(b"PK\x01\x02", i + 46 + nlen + elen + clen)
    raise AssertionError(f"no member {suffix}")


def _no_torch_load(monkeypatch):
    def fail(*_a, **_k):
        raise AssertionError("torch.load read a bomb")

    monkeypatch.setattr(torch, "load", fail)


def test_lying_sizes_are_refused_before_torch_reads(tmp_path, tiny_net, monkeypatch):
    good = tmp_path / "sd.pt"
    torch.save(tiny_net.state_dict(), good)
    member = next(n for n in zipfile.ZipFile(good).namelist() if "/data/" in n)
    stored = tmp_path / "stored.pt"  # a stored (uncompressed) tensor claiming 2 GiB
    stored.write_bytes(_patch_central(good.read_bytes(), member, size=2**31))
    # a deflated member claiming far more than deflate can expand
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    small = raw.compress(bytes(4096)) + raw.flush()
    ratio = tmp_path / "ratio.pt"
    ratio.write_bytes(_zip([("archive/data.pkl", small, zipfile.ZIP_DEFLATED, zlib.crc32(bytes(4096)), 2**30)]))
    _no_torch_load(monkeypatch)
    for p, what in ((stored, "is stored uncompressed but declares 2147483648 bytes"),
                    (ratio, "more than deflate can expand")):
        with pytest.raises(LoadError) as err:
            am.load_model(p, arch=ARCH)
        msg = one_line_error(err)
        assert what in msg and "download or save it again" in msg


def test_overlapping_members_are_refused(tmp_path, monkeypatch):
    """Many directory entries pointing at one stored member: torch would allocate the
    member once per entry (the overlapping-file bomb)."""
    good = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(50_000)}, good)
    with zipfile.ZipFile(good) as z:
        big = max(z.infolist(), key=lambda i: i.file_size).filename.encode()
    data = good.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    count, cd_size, cd_start = struct.unpack_from("<HII", data, end + 10)
    i, entry = cd_start, b""
    while i < cd_start + cd_size:  # the big member's central-directory entry
        nlen, elen, clen = struct.unpack_from("<HHH", data, i + 28)
        if data[i + 46:i + 46 + nlen] == big:
            entry = data[i:i + 46 + nlen + elen + clen]
        i += 46 + nlen + elen + clen
    copies = b"".join(entry.replace(big, big[:-1] + bytes([65 + k])) for k in range(20))
    eocd = bytearray(data[end:end + 22])
    struct.pack_into("<HHI", eocd, 8, count + 20, count + 20, cd_size + len(copies))
    bomb = tmp_path / "overlap.pt"
    bomb.write_bytes(data[:cd_start + cd_size] + copies + bytes(eocd))
    assert len(zipfile.ZipFile(bomb).infolist()) == count + 20
    _no_torch_load(monkeypatch)
    with pytest.raises(LoadError) as err:
        am.load_model(bomb, arch=ARCH)
    assert "overlapping" in one_line_error(err)


def test_bomb_inside_an_export_archive(tmp_path, programs):
    """A .pt2's sample inputs are a torch.save archive read by torch.load inside
    torch.export.load: that inner archive is checked too."""
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(programs["cnn"]) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if "sample_inputs" in item.filename:
                data = _pickle_bomb(300)
            zout.writestr(item, data)
    for trust in ({}, {"trust_code": True}):  # size checks hold with trust, too
        with pytest.raises(LoadError) as err:
            am.load_model(evil, **trust)
        msg = one_line_error(err)
        assert "data.pkl" in msg and "inside" in msg


# ============================================================ special and unreadable files
def _no_hang(fn, fifos, timeout=20.0):
    """Run ``fn()`` in a thread; if it blocks (on a FIFO), release it and fail."""
    result = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for fifo in fifos:  # a writer end releases a reader blocked in open()
            fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            os.close(fd)
        t.join(5)
        pytest.fail("loading blocked on a FIFO")
    return result.get("exc")


def test_fifo_as_model_arch_and_zoo_file(tmp_path, tiny_net):
    model = tmp_path / "model.pt"
    os.mkfifo(model)
    exc = _no_hang(lambda: am.load_model(model, arch=ARCH), [model])
    assert isinstance(exc, LoadError) and "FIFO" in str(exc) and "\n" not in str(exc)

    sd = tmp_path / "sd.pt"
    torch.save(tiny_net.state_dict(), sd)
    arch = tmp_path / "nets.py"
    os.mkfifo(arch)
    exc = _no_hang(lambda: am.load_model(sd, arch=f"{arch}:make"), [arch])
    assert isinstance(exc, LoadError) and "--arch file" in str(exc) and "FIFO" in str(exc)

    zoo = tmp_path / "zoo" / "cifar10" / "Linf" / "Standard.pt"
    zoo.parent.mkdir(parents=True)
    os.mkfifo(zoo)
    exc = _no_hang(lambda: am.load_model("robustbench:Standard", model_dir=tmp_path / "zoo"), [zoo])
    assert isinstance(exc, LoadError) and "FIFO" in str(exc), exc


def _deny(monkeypatch, path: Path, func: str = "open"):
    """Make ``open`` (or ``os.stat``) of ``path`` fail as for an unreadable file (the
    tests run as root, where chmod does not stop reads)."""
    real = getattr(builtins, "open") if func == "open" else os.stat

    def fake(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    if func == "open":
        monkeypatch.setattr(builtins, "open", fake)
    else:
        monkeypatch.setattr(os, "stat", fake)


def test_unreadable_files_give_one_line(tmp_path, tiny_net, monkeypatch):
    p = tmp_path / "sd.pt"
    torch.save(tiny_net.state_dict(), p)
    arch = tmp_path / "nets.py"
    arch.write_text("from torch import nn\ndef make():\n    return nn.Linear(2, 2)\n")
    with monkeypatch.context() as m:
        _deny(m, p)
        with pytest.raises(LoadError) as err:
            am.load_model(p, arch=ARCH)
    assert one_line_error(err).startswith(f"cannot read checkpoint {p}: permission denied")
    with monkeypatch.context() as m:
        _deny(m, arch)
        with pytest.raises(LoadError) as err:
            am.load_model(p, arch=f"{arch}:make")
    assert one_line_error(err).startswith(f"cannot read --arch file {arch}: permission denied")
    with monkeypatch.context() as m:
        _deny(m, p, "stat")
        with pytest.raises(LoadError) as err:
            am.load_model(p, arch=ARCH)
    assert "cannot access checkpoint" in one_line_error(err)


def test_io_error_while_hashing_gives_one_line(tmp_path, tiny_net, monkeypatch):
    p = tmp_path / "sd.pt"
    torch.save(tiny_net.state_dict(), p)

    real_open = open

    def broken(path, *args, **kwargs):  # the hash's read of the checkpoint fails
        if Path(path) == p:
            raise OSError(errno.EIO, "Input/output error")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(safeio, "open", broken, raising=False)
    with pytest.raises(LoadError) as err:
        am.load_model(p, arch=ARCH)
    assert "cannot read checkpoint" in one_line_error(err) and "Input/output error" in str(err.value)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs /proc")
def test_proc_self_mem(tmp_path, tiny_net):
    with pytest.raises(LoadError) as err:
        am.load_model("/proc/self/mem", arch=ARCH)
    assert "/proc/self/mem" in one_line_error(err)
    p = tmp_path / "sd.pt"
    torch.save(tiny_net.state_dict(), p)
    with pytest.raises(LoadError) as err:
        am.load_model(p, arch="/proc/self/mem:make")
    assert "not a .py file" in one_line_error(err)
    mem = tmp_path / "mem.py"  # a .py name for it: read, and the read fails cleanly
    mem.symlink_to("/proc/self/mem")
    with pytest.raises(LoadError) as err:
        am.load_model(p, arch=f"{mem}:make")
    assert one_line_error(err).startswith(f"cannot read --arch file {mem}")


# ============================================================ messages and argument types
def test_device_is_checked_before_loading(tmp_path, tiny_net, monkeypatch):
    p = tmp_path / "sd.pt"
    torch.save(tiny_net.state_dict(), p)
    _no_torch_load(monkeypatch)
    with pytest.raises(ArmetricsError) as err:
        am.load_model(p, arch=ARCH, device="nope")
    assert "is not a device" in one_line_error(err)
    if not torch.cuda.is_available():
        with pytest.raises(ArmetricsError) as err:
            am.load_model(p, arch=ARCH, device="cuda")
        assert "no usable CUDA GPU" in one_line_error(err) and "--device cpu" in str(err.value)


ARCH_CODE = """
import sys
from torch import nn

def value_error():
    raise ValueError("width must be even\\nsecond line")

def index_error():
    return [][3]

def runtime_error():
    raise RuntimeError("CUDA out of memory")

def exits():
    sys.exit(0)

def good():
    return nn.Linear(2, 2)
"""


@pytest.mark.parametrize("fn,shown", [("value_error", "ValueError: width must be even"),
                                      ("index_error", "IndexError: list index out of range"),
                                      ("runtime_error", "RuntimeError: CUDA out of memory"),
                                      ("exits", "called sys.exit(0)")])
def test_arch_callable_errors(tmp_path, fn, shown):
    arch = tmp_path / "nets.py"
    arch.write_text(ARCH_CODE)
    p = tmp_path / "w.pt"
    torch.save(nn.Linear(2, 2).state_dict(), p)
    with pytest.raises(LoadError) as err:
        am.load_model(p, arch=f"{arch}:{fn}")
    msg = one_line_error(err)
    assert shown in msg and f"{arch}:{fn}" in msg


def test_arch_file_exiting_at_import(tmp_path):
    arch = tmp_path / "exits.py"
    arch.write_text("import sys\nsys.exit(0)\n")
    p = tmp_path / "w.pt"
    torch.save(nn.Linear(2, 2).state_dict(), p)
    with pytest.raises(LoadError) as err:
        am.load_model(p, arch=f"{arch}:make")
    msg = one_line_error(err)
    assert f"--arch file {arch} called sys.exit(0)" in msg


@pytest.mark.parametrize("kwargs,named", [
    ({"arch": 5}, "arch"),
    ({"arch_kwargs": "x"}, "arch_kwargs"),
    ({"source": 3}, "source"),
    ({"mean": ["a"], "std": [1.0]}, "mean"),
    ({"mean": [0.5, 0.5, 0.5], "std": [float("nan"), 1, 1]}, "std"),
    ({"mean": [0.5, 0.5, 0.5], "std": [0.0, 1, 1]}, "std"),
    ({"mean": [0.5, 0.5, 0.5], "std": [-0.2, 1, 1]}, "std"),
    ({"mean": [0.5, 0.5, 0.5], "std": "0.2,0.2,0.2"}, "std"),
    ({"trust_pickle": "yes"}, "trust_pickle"),
    ({"trust_code": 1}, "trust_code"),
    ({"model_dir": 5}, "model_dir"),
    ({"dataset": None}, "dataset"),
])
def test_bad_argument_types(tmp_path, tiny_net, monkeypatch, kwargs, named):
    p = tmp_path / "sd.pt"
    torch.save(tiny_net.state_dict(), p)
    args = {"source": p, "arch": ARCH, **kwargs}
    _no_torch_load(monkeypatch)  # checked before anything is read
    with pytest.raises(ArmetricsError) as err:
        am.load_model(**args)
    assert named in one_line_error(err)


def test_paths_with_newlines_stay_one_line(tmp_path):
    p = tmp_path / "model\nerror: fake.pt"
    p.write_text("<!DOCTYPE html><html>quota exceeded</html>")
    with pytest.raises(LoadError) as err:
        am.load_model(p, arch=ARCH)
    assert "HTML page" in one_line_error(err)


# ============================================================ noise
def test_loading_prints_no_library_warnings(tmp_path, programs, capfd, monkeypatch):
    ts = _script(_ForwardDropper(str(tmp_path / "unused")), tmp_path / "ts.pt")
    renamed = tmp_path / "program.pt"  # a .pt2 under another name: torch.export logs about it
    renamed.write_bytes(programs["cnn"].read_bytes())
    monkeypatch.delenv("ARMETRICS_DEBUG", raising=False)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        am.load_model(ts, trust_code=True)
        am.load_model(renamed)
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""
    monkeypatch.setenv("ARMETRICS_DEBUG", "1")  # --debug shows them again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        am.load_model(ts, trust_code=True)
    assert any("jit.load" in str(w.message) for w in caught)


def test_guard_and_symbolic_size_checkers():
    """What torch writes passes; anything reaching past size arithmetic does not."""
    assert export_check._guard_problem("(L['x'].size()[0] // 2) <= L['x'].size()[0]") is None
    assert export_check._guard_problem("math.floor(L['x'].size()[0] / 3) == 2") is None
    assert export_check._guard_problem("torch.save(L['x'], 'p')") is not None
    assert export_check._guard_problem("L['x'].size.__self__") is not None
    assert export_check._sympy_problem("Mul(Integer(2), Symbol('s65', positive=True, integer=True))") is None
    assert export_check._sympy_problem("Symbol('s0').__class__") is not None
