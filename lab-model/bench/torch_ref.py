"""The PyTorch side of `cargo lab bench`: the lab CNN in PyTorch, timed and checked on request.

`cargo lab bench` starts this script in the project venv and talks to it in JSON lines: one
command per line on stdin, one answer per line on stdout. Weights and inputs come from the
safetensors files the bench names, so both sides compute on the same numbers.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


class LabCnn(nn.Module):
    """lab-support's Classifier: conv3x3 1->32, relu, pool, conv3x3 32->64, relu, pool, fc, fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(1600, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def targeted_loss(logits, targets):
    """The lab's targeted objective: -log p(target), summed over the batch."""
    return -F.log_softmax(logits, dim=1).gather(1, targets[:, None]).sum()


class Bench:
    def __init__(self, weights, inputs):
        state = load_file(weights)
        self.frozen = LabCnn()
        self.frozen.load_state_dict(state)
        self.frozen.requires_grad_(False)
        self.trained = LabCnn()
        self.trained.load_state_dict(state)
        self.opt = torch.optim.Adam(self.trained.parameters(), lr=1e-3)
        data = load_file(inputs)
        self.images = data["images"].float().contiguous()
        self.targets = data["targets"].long()
        self.labels = data["labels"].long()

    def check(self, out):
        x = self.images.clone().requires_grad_(True)
        logits = self.frozen(x)
        (grad,) = torch.autograd.grad(targeted_loss(logits, self.targets), x)
        save_file({"logits": logits.detach().contiguous(), "grad": grad.contiguous()}, out)
        return {}

    def time(self, case, batch, iters):
        step = getattr(self, case)
        state = step(batch, None)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            state = step(batch, state)
            times.append((time.perf_counter() - start) * 1e3)
        return {"ms": times}

    def input_grad_step(self, batch, x):
        if x is None:
            return self.images[:batch].clone()
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(targeted_loss(self.frozen(x), self.targets[:batch]), x)
        return (x - 0.01 * grad.sign()).clamp(0.0, 1.0).detach()

    def forward(self, batch, _):
        with torch.no_grad():
            return self.frozen(self.images[:batch])

    def adv_train_step(self, batch, _, eps=0.3, steps=7, ratio=0.3):
        """lab-support's adversarial training step: PGD-7 from a random start, then Adam."""
        x0, y = self.images[:batch], self.labels[:batch]
        x = (x0 + torch.empty_like(x0).uniform_(-eps, eps)).clamp(0.0, 1.0)
        for _ in range(steps):
            x.requires_grad_(True)
            # The lab's untargeted objective, log p(true) summed, descended; gradients for x only.
            loss = F.log_softmax(self.trained(x), dim=1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(loss, x)
            x = torch.min(torch.max(x.detach() - ratio * eps * grad.sign(), x0 - eps), x0 + eps).clamp(0.0, 1.0)
        self.opt.zero_grad()
        loss = F.cross_entropy(self.trained(x), y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def ibp_train_step(self, batch, _, eps=0.4, kappa=0.5):
        """lab-support's certified training step: clean CE and IBP worst-case margin CE, then Adam."""
        x, y = self.images[:batch], self.labels[:batch]
        m = self.trained
        lo, hi = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
        for conv in (m.conv1, m.conv2):
            c, r = (lo + hi) / 2, (hi - lo) / 2
            c, r = F.conv2d(c, conv.weight, conv.bias), F.conv2d(r, conv.weight.abs())
            lo, hi = F.max_pool2d(F.relu(c - r), 2), F.max_pool2d(F.relu(c + r), 2)
        lo, hi = lo.flatten(1), hi.flatten(1)
        c, r = (lo + hi) / 2, (hi - lo) / 2
        c, r = F.linear(c, m.fc1.weight, m.fc1.bias), F.linear(r, m.fc1.weight.abs())
        lo, hi = F.relu(c - r), F.relu(c + r)
        c, r = (lo + hi) / 2, (hi - lo) / 2
        w, b = m.fc2.weight, m.fc2.bias
        diff = w[y][:, None, :] - w[None, :, :]
        margins = (diff * c[:, None, :]).sum(2) - (diff.abs() * r[:, None, :]).sum(2) + b[y][:, None] - b[None, :]
        self.opt.zero_grad()
        loss = kappa * F.cross_entropy(m(x), y) + (1 - kappa) * F.cross_entropy(-margins, y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def train_step(self, batch, _):
        self.opt.zero_grad()
        loss = F.cross_entropy(self.trained(self.images[:batch]), self.labels[:batch])
        loss.backward()
        self.opt.step()
        return loss.item()


def autoattack(weights, inputs, eps, seed):
    """The reference evaluation: AutoAttack's standard version (Croce & Hein 2020) on the lab CNN,
    built from torchattacks' own attacks with the original's settings (APGD-CE and APGD-T with 100
    steps, APGD-T and FAB-T against the 9 other classes, Square with 5,000 queries), each on the
    digits the earlier ones left standing. torchattacks' `AutoAttack` class leaves the steps at
    its default of 10; the original runs 100."""
    import torchattacks  # the bench's --eval only

    model = LabCnn()
    model.load_state_dict(load_file(weights))
    model.eval().requires_grad_(False)
    data = load_file(inputs)
    x, y = data["images"].float().contiguous(), data["labels"].long()
    common = {"norm": "Linf", "eps": eps, "seed": seed, "n_restarts": 1}
    attacks = [
        ("APGD-CE", torchattacks.APGD(model, steps=100, loss="ce", **common)),
        ("APGD-T", torchattacks.APGDT(model, steps=100, n_classes=10, **common)),
        ("FAB-T", torchattacks.FAB(model, steps=100, multi_targeted=True, n_classes=10, **common)),
        ("Square", torchattacks.Square(model, n_queries=5000, **common)),
    ]
    with torch.no_grad():
        standing = model(x).argmax(1) == y
    clean_errors = int((~standing).sum())
    broken, seconds = {}, {}
    for name, attack in attacks:
        idx = standing.nonzero().flatten()
        start = time.perf_counter()
        if len(idx) > 0:
            adv = attack(x[idx], y[idx]).detach()
            moved = float((adv - x[idx]).abs().max())
            if moved > eps + 1e-5 or float(adv.min()) < 0.0 or float(adv.max()) > 1.0:
                raise ValueError(f"{name} left its budget: moved {moved} at eps {eps}")
            with torch.no_grad():
                wrong = model(adv).argmax(1) != y[idx]
            standing[idx[wrong]] = False
            broken[name] = int(wrong.sum())
        else:
            broken[name] = 0
        seconds[name] = time.perf_counter() - start
    return {
        "accuracy": float(standing.float().mean()),
        "clean_errors": clean_errors,
        "broken_by": broken,
        "seconds": seconds,
        "torchattacks": torchattacks.__version__,
    }


def main():
    bench = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "load":
                bench = Bench(cmd["weights"], cmd["inputs"])
                answer = {"torch": torch.__version__, "threads": torch.get_num_threads()}
            elif cmd["cmd"] == "check":
                answer = bench.check(cmd["out"])
            elif cmd["cmd"] == "autoattack":
                answer = autoattack(cmd["weights"], cmd["inputs"], cmd["eps"], cmd["seed"])
            elif cmd["cmd"] == "time":
                answer = bench.time(cmd["case"], cmd["batch"], cmd["iters"])
            else:
                answer = {"error": f"unknown command {cmd['cmd']!r}"}
        except Exception as e:  # the bench prints it and stops
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
