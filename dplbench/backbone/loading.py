"""Build a :class:`~dplbench.backbone.core.Backbone` from a backbone config, never downloading anything.

Sources, in order of precedence:

- ``checkpoint=/path/file`` - a local state dict / open_clip checkpoint (``.bin``, ``.pt``, ``.pth``,
  ``.safetensors``; OpenAI's TorchScript ``ViT-B-16.pt`` too) for the architecture ``name``. A ``pretrained``
  tag given next to it still selects QuickGELU and the normalisation of that tag.
- ``name="toy"`` (the default): the built-in toy CLIP (``dplbench.toy.model.load_toy_clip``).
- an open_clip model name with a ``pretrained`` tag: the weights file is looked up in the local caches only
  (``cache_dir`` if given, else ``~/.cache/clip`` and the Hugging Face hub cache); absent -> WeightsNotFoundError.
  Without a tag, the catalog's default tag of that name is used (ViT-B-16 -> openai); ``pretrained=random``
  builds a randomly initialised model (tests, benchmarks) of the architecture of the catalog's tag.

OpenAI weights get QuickGELU (``force_quick_gelu``), so does a random-init OpenAI architecture (ViT-B-16, ViT-B-32,
ViT-L-14); the activation is checked after building.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from dplbench.backbone.core import Backbone
from dplbench.backbone.precision import resolve_device
from dplbench.config import BackboneConfig
from dplbench.errors import ConfigError, DplbenchError, UnknownNameError, WeightsNotFoundError

RANDOM_INIT = "random"
DEFAULT_URL_CACHE = "~/.cache/clip"     # where open_clip itself stores url downloads


def create_backbone(cfg: BackboneConfig, device: str | torch.device | None = "auto") -> Backbone:
    """The frozen backbone described by ``cfg``."""
    dev = resolve_device(device)
    precision = str(cfg.precision)
    if cfg.name == "toy":
        return _toy_backbone(cfg.pretrained, cfg.checkpoint, precision, dev)
    return _open_clip_backbone(cfg.name, cfg.pretrained, cfg.checkpoint, precision, cfg.cache_dir, dev)


def _toy_backbone(pretrained: str | None, checkpoint: str | None, precision: str, device: torch.device) -> Backbone:
    from dplbench.toy.model import DEFAULT_CHECKPOINT, load_toy_clip

    if pretrained:
        raise ConfigError(f"backbone 'toy' has no pretrained tags (got {pretrained!r}); "
                          "use backbone.checkpoint=/path/toy_clip.pt for another toy checkpoint")
    model = load_toy_clip(checkpoint)
    weights = Path(checkpoint).expanduser() if checkpoint else DEFAULT_CHECKPOINT
    return Backbone.from_model(model, None, name="toy", pretrained=None, precision=precision, device=device,
                               model_config="toy", checkpoint=checkpoint, weights_file=str(weights))


def _open_clip_backbone(name: str, pretrained: str | None, checkpoint: str | None, precision: str,
                        cache_dir: str | None, device: torch.device) -> Backbone:
    import open_clip

    model_name = name.replace("/", "-")
    if model_name not in open_clip.list_models():
        raise UnknownNameError("backbone", name, [*open_clip.list_models(), "toy"])
    _check_architecture(model_name, open_clip.get_model_config(model_name))
    if pretrained is None and checkpoint is None:
        pretrained = _catalog_default_tag(model_name)
        if pretrained is None:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "(none)"
            raise ConfigError(f"backbone {name!r} needs backbone.pretrained=<tag> (tags: {tags}), "
                              f"backbone.checkpoint=/path/file or backbone.pretrained={RANDOM_INIT}")
    tag_cfg: dict = {}
    if pretrained and pretrained != RANDOM_INIT:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not tag_cfg:
            raise UnknownNameError(f"pretrained tag of {model_name}", pretrained,
                                   [*open_clip.list_pretrained_tags_by_model(model_name), RANDOM_INIT])
    # the architecture a tag implies (activation, normalisation); random init keeps the catalog tag's, so a random
    # ViT-B-16 is OpenAI's QuickGELU architecture (what tests and benchmarks mean to time)
    arch_cfg = tag_cfg
    if pretrained == RANDOM_INIT and _catalog_default_tag(model_name):
        arch_cfg = open_clip.get_pretrained_cfg(model_name, _catalog_default_tag(model_name))
    if checkpoint:
        weights = Path(checkpoint).expanduser()
        if not weights.is_file():
            raise WeightsNotFoundError(f"backbone checkpoint not found: {weights}")
    elif tag_cfg:
        weights = find_cached_weights(model_name, pretrained, tag_cfg, cache_dir)
    else:
        weights = None

    quick_gelu = bool(arch_cfg.get("quick_gelu", False))
    preprocess = {k: arch_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in arch_cfg}
    with _hub_offline():
        model = open_clip.create_model(model_name, pretrained=None, precision="fp32", device="cpu",
                                       force_quick_gelu=quick_gelu, force_preprocess_cfg=preprocess or None)
        tokenizer = open_clip.get_tokenizer(model_name)
    if weights is not None:
        _load_weights(model, weights, model_name)
    activation = type(model.transformer.resblocks[0].mlp.gelu).__name__
    if quick_gelu and activation != "QuickGELU":
        raise DplbenchError(f"{model_name} with {pretrained!r} weights must use QuickGELU, got {activation}")
    return Backbone.from_model(model, tokenizer, name=name, pretrained=pretrained, precision=precision,
                               device=device, model_config=model_name + ("+quickgelu" if quick_gelu else ""),
                               checkpoint=checkpoint, weights_file=str(weights) if weights else None)


def _check_architecture(model_name: str, config: dict) -> None:
    """Reject, before any weights lookup, configs whose towers the prompt paths cannot drive."""
    text, vision = config.get("text_cfg", {}), config.get("vision_cfg", {})
    reasons = []
    if config.get("custom_text") or "hf_model_name" in text:
        reasons.append("custom/HF text tower")
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)):
        reasons.append("non-open_clip ViT image tower (timm or ResNet)")
    if reasons:
        raise DplbenchError(f"backbone {model_name!r} cannot be used for prompt learning: {', '.join(reasons)}; "
                            "use a CLIP ViT config such as ViT-B-16")


def _catalog_default_tag(model_name: str) -> str | None:
    from dplbench.catalog import BACKBONES

    return BACKBONES.get(model_name).pretrained if model_name in BACKBONES else None


def _search_dirs(cache_dir: str | None) -> list[Path]:
    if cache_dir:
        return [Path(cache_dir).expanduser()]
    from huggingface_hub import constants

    return [Path(DEFAULT_URL_CACHE).expanduser(), Path(constants.HF_HUB_CACHE)]


def _safetensors_twin(filename: str) -> str | None:
    if filename == "open_clip_pytorch_model.bin":
        return "open_clip_model.safetensors"
    if filename.endswith((".bin", ".pth")):
        return filename[:-4] + ".safetensors"
    return None


def find_cached_weights(model_name: str, tag: str, tag_cfg: dict, cache_dir: str | None) -> Path:
    """Local path of the weights of ``model_name``/``tag`` (no network), or WeightsNotFoundError at once.

    Looks for the tag's url file name and its hub file (plus the .safetensors twin) directly in each search
    directory and, for hub files, in the Hugging Face cache layout under it.
    """
    if tag_cfg.get("file"):
        path = Path(tag_cfg["file"]).expanduser()
        if path.is_file():
            return path
        raise WeightsNotFoundError(f"weights of {model_name} {tag!r} not found: {path}")
    names: list[str] = []
    url = tag_cfg.get("url") or ""
    if url:
        names.append(os.path.basename(url))
    repo, hub_file = "", ""
    if tag_cfg.get("hf_hub"):
        repo, hub_file = os.path.split(tag_cfg["hf_hub"])
        hub_file = hub_file or "open_clip_pytorch_model.bin"
        names += [n for n in (_safetensors_twin(hub_file), hub_file) if n]
    dirs = _search_dirs(cache_dir)
    for directory in dirs:
        for filename in names:
            if (directory / filename).is_file():
                return directory / filename
        if repo:
            from huggingface_hub import try_to_load_from_cache

            for filename in (_safetensors_twin(hub_file), hub_file):
                if filename:
                    hit = try_to_load_from_cache(repo, filename, cache_dir=directory)
                    if isinstance(hit, str) and os.path.isfile(hit):
                        return Path(hit)
    where = ", ".join(str(d) for d in dirs)
    how = f"{' or '.join(names)} into {dirs[0]}" if names else f"the weights file into {dirs[0]}"
    if repo:
        how += f" (or the hub cache of {repo})"
    raise WeightsNotFoundError(
        f"weights of {model_name} with pretrained={tag!r} not found locally (searched {where}) and downloads are "
        f"disabled: place {how}, set backbone.cache_dir, or use backbone.checkpoint=/path/file.bin")


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make any Hugging Face hub access inside fail instead of reaching the network."""
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with ``constants.pkl`` and compiled ``code/`` (a zip ``torch.save`` file has
    ``data.pkl`` and no ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names) and \
        any("/code/" in n or n.startswith("code/") for n in names)


def _openai_architecture(model_name: str) -> bool:
    """Whether OpenAI released weights for ``model_name`` (open_clip lists an ``openai`` tag for it)."""
    import open_clip

    return "openai" in open_clip.list_pretrained_tags_by_model(model_name)


def _load_torchscript_openai(model: torch.nn.Module, path: Path, model_name: str) -> None:
    """OpenAI's original CLIP release is a TorchScript archive whose tensors carry open_clip's key names. Opening
    TorchScript runs its compiled code, so only that format is accepted: for an OpenAI architecture, and never for
    the toy backbone (docs/architecture.md, "Security")."""
    if not _openai_architecture(model_name):
        raise WeightsNotFoundError(
            f"{path} is a TorchScript archive; dplbench opens TorchScript only as OpenAI's released CLIP weights "
            f"(architectures with an 'openai' tag), not for {model_name}: save a state dict instead "
            "(torch.save(model.state_dict(), 'weights.pt'))")
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    model.load_state_dict(state, strict=True)


def _load_weights(model: torch.nn.Module, path: Path, model_name: str) -> None:
    """Load a weights file strictly into ``model`` (pickles with weights_only=True)."""
    from open_clip.factory import load_checkpoint

    try:
        if _is_torchscript(path):
            _load_torchscript_openai(model, path, model_name)
        else:
            load_checkpoint(model, str(path), strict=True, weights_only=True, device="cpu")
    except (RuntimeError, KeyError, ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsNotFoundError(f"cannot load {path} into {model_name}: {first[:300]}") from None
