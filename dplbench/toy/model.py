"""The tiny CLIP of the toy world: an open_clip `CLIP` whose vision tower is a standard open_clip
`VisionTransformer` with a 3-layer stride-2 conv stem in place of the patch embedding `visual.conv1`
(same 4x4 token grid as patch 8 at 32 px; a plain patch-8 embedding does not learn shape at this size).

The checkpoint stores every parameter except the unused rows of the 49408-row token embedding: only the rows
of tokens the toy world's captions and templates use are trained; the others are regenerated from
``EMBED_SEED`` exactly as they were initialised.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from dplbench.errors import WeightsNotFoundError
from dplbench.fileio import atomic_torch_save

CHECKPOINT_FORMAT = "dplbench-toy-clip/1"
DEFAULT_CHECKPOINT = Path(__file__).with_name("assets") / "toy_clip.pt"
EMBED_SEED = 0
TOY_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation, kept for familiarity
TOY_STD = (0.26862954, 0.26130258, 0.27577711)
TOY_CONFIG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
REPRODUCE_COMMAND = "dplbench pretrain-toy --out dplbench/toy/assets/toy_clip.pt"


class ConvStem(nn.Sequential):
    """3 x (3x3 conv, stride 2): 32x32 image -> 4x4 grid of ``width``-dim tokens (replaces the patch conv).

    Pretraining uses BatchNorm after the first two convs (it makes the stem train quickly); `fold_batchnorm`
    then merges each BatchNorm into its conv, so the shipped stem is plain convs + GELU with no batch
    statistics (a frozen backbone put in train mode by a method cannot drift).
    """

    def __init__(self, width: int, channels: tuple[int, int] = (32, 64), batchnorm: bool = False):
        c1, c2 = channels
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        super().__init__(
            nn.Conv2d(3, c1, 3, stride=2, padding=1), norm(c1), nn.GELU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), norm(c2), nn.GELU(),
            nn.Conv2d(c2, width, 3, stride=2, padding=1),
        )

    @torch.no_grad()
    def fold_batchnorm(self) -> ConvStem:
        """An equivalent stem (in eval mode) without BatchNorm layers."""
        width = self[6].out_channels
        folded = ConvStem(width, (self[0].out_channels, self[3].out_channels), batchnorm=False)
        for i in (0, 3, 6):
            conv, bn = self[i], self[i + 1] if i < 6 else None
            w, b = conv.weight.clone(), conv.bias.clone()
            if isinstance(bn, nn.BatchNorm2d):
                k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w, b = w * k[:, None, None, None], (b - bn.running_mean) * k + bn.bias
            folded[i].weight.copy_(w)
            folded[i].bias.copy_(b)
        return folded


def regenerated_token_embedding(vocab_size: int, width: int, seed: int = EMBED_SEED) -> torch.Tensor:
    """The deterministic initial token embedding (std 0.02, as open_clip initialises it)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(vocab_size, width, generator=gen) * 0.02


def build_toy_clip(config: dict | None = None, stem_batchnorm: bool = False) -> nn.Module:
    """A freshly initialised toy CLIP (random weights, deterministic token embedding)."""
    from open_clip.model import CLIP, set_model_preprocess_cfg

    cfg = copy.deepcopy(config or TOY_CONFIG)
    model = CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])
    model.visual.conv1 = ConvStem(cfg["vision_cfg"]["width"], batchnorm=stem_batchnorm)
    with torch.no_grad():
        model.token_embedding.weight.copy_(regenerated_token_embedding(*model.token_embedding.weight.shape))
    set_model_preprocess_cfg(model, {"size": cfg["vision_cfg"]["image_size"], "mode": "RGB", "mean": TOY_MEAN,
                                     "std": TOY_STD, "interpolation": "bicubic", "resize_mode": "shortest",
                                     "fill_color": 0})
    return model


def checkpoint_state(model: nn.Module, token_rows: torch.Tensor, meta: dict | None = None) -> dict:
    """The shipped form: all parameters but the untouched token-embedding rows (see module docstring).
    A BatchNorm stem must be folded first (`ConvStem.fold_batchnorm`)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "token_embedding.weight"}
    emb = model.token_embedding.weight.detach()
    rows = torch.as_tensor(sorted(set(int(r) for r in token_rows)), dtype=torch.long)
    untouched = torch.ones(emb.shape[0], dtype=torch.bool)
    untouched[rows] = False
    fresh = regenerated_token_embedding(*emb.shape)
    if not torch.equal(emb[untouched], fresh[untouched]):
        raise RuntimeError("token-embedding rows outside token_rows changed during training; cannot drop them")
    return {"format": CHECKPOINT_FORMAT, "config": copy.deepcopy(TOY_CONFIG), "state_dict": state,
            "token_rows": rows, "token_values": emb[rows].clone(), "embed_seed": EMBED_SEED,
            "meta": dict(meta or {})}


def save_checkpoint(payload: dict, path: str | Path) -> None:
    atomic_torch_save(payload, path)


def load_toy_clip(checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The pretrained toy CLIP in eval mode, from the shipped checkpoint or a user-given path."""
    path = Path(checkpoint).expanduser() if checkpoint else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise WeightsNotFoundError(f"toy CLIP checkpoint not found: {path} (create it with `{REPRODUCE_COMMAND}`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise WeightsNotFoundError(f"cannot read toy CLIP checkpoint {path}: {exc}".splitlines()[0]) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise WeightsNotFoundError(f"{path} is not a toy CLIP checkpoint (expected format {CHECKPOINT_FORMAT})")
    model = build_toy_clip(payload["config"])
    if payload.get("embed_seed", EMBED_SEED) != EMBED_SEED:
        raise WeightsNotFoundError(f"{path}: unsupported embed_seed {payload['embed_seed']}")
    emb = regenerated_token_embedding(*model.token_embedding.weight.shape)
    emb[payload["token_rows"]] = payload["token_values"].float()
    state = {k: v.float() for k, v in payload["state_dict"].items()}
    state["token_embedding.weight"] = emb
    model.load_state_dict(state)
    return model.to(device).eval()
