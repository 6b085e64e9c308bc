"""Train the example CIFAR-10 networks: standard (eps=0) or PGD adversarial training.

    python examples/train_cifar.py --eps 8 --epochs 5 --out examples/checkpoints

``--data`` is a folder with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, or with
``train.tar.xz``/``test.tar.xz`` (extracted into ``--workdir`` once), e.g.
``../shared/data/cifar10-jpeg``. Linf PGD adversarial training (Madry et al. 2018):
each batch is replaced by PGD examples (``--steps`` steps of size 2.5*eps/steps from a
random start, model in eval mode) before the SGD step. Deterministic given
``--seed`` and ``--threads``. Writes ``<out>/small_cnn_eps<E>.pt`` (a state_dict) and
``<out>/small_cnn_eps<E>.json`` (training config and test accuracies).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import small_cnn  # noqa: E402

from armetrics.attacks import pgd  # noqa: E402
from armetrics.data import load_data  # noqa: E402


def split_dir(data: Path, split: str, workdir: Path) -> Path:
    if (data / split).is_dir():
        return data / split
    archive = data / f"{split}.tar.xz"
    if not archive.is_file():
        sys.exit(f"error: {data} has neither {split}/ nor {split}.tar.xz: pass --data pointing at CIFAR-10 JPEGs")
    target = workdir / split
    if not target.is_dir():
        workdir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(workdir, filter="data")
    return target


def as_arrays(folder: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """All images of an ImageFolder as uint8 NCHW + labels (cached as .npz)."""
    if cache.is_file():
        with np.load(cache) as f:
            return f["x"], f["y"]
    data = load_data(str(folder), batch_size=1000, seed=None)
    xs, ys = [], []
    for x, y in tqdm(data.batches(), total=len(data), desc=f"decode {folder.name}"):
        xs.append((x * 255).round().to(torch.uint8).numpy())
        ys.append(y.numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    np.savez(cache, x=x, y=y)
    return x, y


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop (4-pixel zero padding) and horizontal flip, per image."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    i = torch.randint(0, 9, (n,), generator=g)
    j = torch.randint(0, 9, (n,), generator=g)
    out = torch.stack([padded[k, :, i[k]:i[k] + 32, j[k]:j[k] + 32] for k in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(3)
    return out


@torch.no_grad()
def accuracy(model, x, y, bs=500) -> float:
    model.eval()
    correct = 0
    for k in range(0, len(x), bs):
        xb = torch.from_numpy(x[k:k + bs]).float() / 255
        correct += int((model(xb).argmax(1) == torch.from_numpy(y[k:k + bs])).sum())
    return correct / len(x)


def pgd_accuracy(model, x, y, eps, steps=10, bs=250, seed=0) -> float:
    model.eval()
    g = torch.Generator().manual_seed(seed)
    correct = 0
    for k in range(0, len(x), bs):
        xb = torch.from_numpy(x[k:k + bs]).float() / 255
        yb = torch.from_numpy(y[k:k + bs])
        xa = pgd(model, xb, yb, eps, norm="Linf", steps=steps, generator=g)
        with torch.no_grad():
            correct += int((model(xa).argmax(1) == yb).sum())
    return correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/armetrics-cifar10"))
    ap.add_argument("--eps", type=float, default=0.0, help="Linf radius in 1/255 units (0 = standard training)")
    ap.add_argument("--steps", type=int, default=2, help="PGD steps per training batch")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the one-cycle schedule")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-n", type=int, default=1000, help="test images for the PGD accuracies")
    ap.add_argument("--out", type=Path, default=Path("examples/checkpoints"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    xtr, ytr = as_arrays(split_dir(args.data, "train", args.workdir), args.workdir / "train.npz")
    xte, yte = as_arrays(split_dir(args.data, "test", args.workdir), args.workdir / "test.npz")

    model = small_cnn(width=args.width)
    steps_per_epoch = len(xtr) // args.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.25)
    g = torch.Generator().manual_seed(args.seed)
    eps = args.eps / 255
    t0 = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=g).numpy()
        bar = tqdm(range(steps_per_epoch), desc=f"eps={args.eps:g} epoch {epoch + 1}/{args.epochs}")
        for s in bar:
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            xb = augment(torch.from_numpy(xtr[idx]).float() / 255, g)
            yb = torch.from_numpy(ytr[idx])
            if eps > 0:
                model.eval()
                xb = pgd(model, xb, yb, eps, norm="Linf", steps=args.steps, generator=g)
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if s % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.time() - t0
    model.eval()
    sel = np.random.default_rng(0).permutation(len(xte))[: args.eval_n]
    card = {
        "arch": "examples/models.py:small_cnn", "arch_kwargs": {"width": args.width},
        "data": "CIFAR-10 train (50,000 JPEG q75 images), tested on CIFAR-10 test",
        "eps": f"{args.eps:g}/255", "eps_value": eps, "pgd_train_steps": args.steps if eps else 0,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "train_seconds": round(train_seconds),
        "clean_accuracy": accuracy(model, xte, yte),
        "pgd_eval": {"steps": 10, "n": len(sel), "norm": "Linf"},
    }
    for e in (2, 4, 8):
        card[f"pgd_accuracy_{e}"] = pgd_accuracy(model, xte[sel], yte[sel], e / 255)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"small_cnn_eps{args.eps:g}"
    torch.save(model.state_dict(), stem.with_suffix(".pt"))
    stem.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
