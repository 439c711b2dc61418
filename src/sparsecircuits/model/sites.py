"""Named sites and the one intervention mechanism.

Every activation the model exposes passes through a `Site`, an identity-like module in the
model's tree at a path a person can guess (`blocks[1].mlp.post_act`, `blocks[0].attn.q`,
`blocks[1].resid_mid`, `final_resid`), which consults the registry `SiteHooks` inside the one
forward pass. So PyTorch's `register_forward_hook`, nnsight and `model.hooks` all reach the same
tensor. A registry hook is `fn(x, site) -> tensor | None`: returning None leaves the activation as
it is (recording), returning a tensor replaces it (patching, masking, mean ablation, bridges).
Hooks are ordinary autograd ops, so gradients flow through them.

    with model.hooks({"0.mlp.post_act": lambda x, site: x * 0}):
        logits = model(tokens)
    logits, cache = model.run_with_cache(tokens, ["1.attn.q"])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

Hook = Callable[[torch.Tensor, str], "torch.Tensor | None"]

# Sites that only record (the residual stream is never sparsified).
def residual_sites(n_layer: int) -> list[str]:
    sites = []
    for layer in range(n_layer):
        sites += [f"{layer}.resid_in", f"{layer}.resid_mid"]
    return sites + ["final_resid"]


class SiteHooks:
    """The registry the forward pass consults at every site."""

    def __init__(self, site_names: Iterable[str]):
        self.site_names = tuple(site_names)
        self._known = frozenset(self.site_names)
        self._hooks: dict[str, list[Hook]] = {}

    def __call__(self, site: str, x: torch.Tensor) -> torch.Tensor:
        for fn in self._hooks.get(site, ()):
            out = fn(x, site)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    what = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else repr(out)[:80]
                    raise TypeError(f"the hook {getattr(fn, '__name__', fn)!s} at site '{site}' returned {what}: a hook returns"
                                    f" None (to leave the activation) or a tensor of its shape {tuple(x.shape)}")
                x = out
        return x

    def check(self, site: str) -> None:
        if site not in self._known:
            raise KeyError(f"unknown site '{site}' (sites look like '0.attn.q', '1.mlp.post_act', 'final_resid')")

    @contextmanager
    def active(self, hooks: Mapping[str, Hook | list[Hook]]):
        added = []
        for site, fns in hooks.items():
            self.check(site)
            for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
                self._hooks.setdefault(site, []).append(fn)
                added.append((site, fn))
        try:
            yield
        finally:
            for site, fn in added:
                self._hooks[site].remove(fn)
                if not self._hooks[site]:
                    del self._hooks[site]


class Site(nn.Module):
    """One named site (`name`, e.g. "1.mlp.post_act") as a module: the activation after AbsTopK
    passes through it, and through the registry hooks `model.hooks` installs."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.registry: tuple[SiteHooks, ...] = ()  # the model's, set when the model is built (a tuple: not a submodule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.registry[0](self.name, x) if self.registry else x

    def extra_repr(self) -> str:
        return self.name


class Sites(nn.Module):
    """A group of sites under one name (`attn`, `mlp`), each an attribute: `blocks[0].attn.q`."""

    def __init__(self, prefix: str, names: Iterable[str]):
        super().__init__()
        for name in names:
            self.add_module(name, Site(f"{prefix}.{name}"))


def record_into(cache: dict[str, torch.Tensor], detach: bool = True) -> Hook:
    """A hook that stores the activation under its site name."""

    def hook(x: torch.Tensor, site: str) -> None:
        cache[site] = x.detach() if detach else x

    return hook


def replace_with(value: torch.Tensor) -> Hook:
    """A hook that substitutes `value` (broadcast to the activation's shape)."""

    def hook(x: torch.Tensor, site: str) -> torch.Tensor:
        return value.to(x.dtype).expand_as(x)

    return hook
