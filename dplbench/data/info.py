"""Pure-data description of a dataset (no torch): what the registry and `dplbench ls datasets` see."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DatasetInfo:
    name: str                      # registry key, e.g. "oxford_pets" or "toy_shapes"
    description: str
    folder: str                    # folder under the data root ("" for toy datasets)
    num_classes: int
    template: str                  # the hand-written zero-shot template, e.g. "a photo of a {}."
    kind: str                      # "standard" | "toy"
    loader: str                    # "module:function" -> function(info, root: Path) -> DatasetSplits
    test_only: bool = False        # ImageNet variants: test split only
    required: tuple[str, ...] = field(default_factory=tuple)  # paths (relative to root/folder) that must exist
    layout: str = ""               # one-line description of the expected on-disk layout, for error messages
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop scale of the training transform
    image_dir: str = ""            # image folder relative to the dataset folder (standard datasets)
    split_file: str = ""           # split file (or split-file prefix) relative to the dataset folder
    split_sizes: tuple[int | None, int | None, int | None] = (None, None, None)  # published train/val/test
    #                                                          counts (docs/protocols.md §2.2); None = not checked
    other_folders: tuple[str, ...] = ()  # folder names other code bases use for the same data (e.g. ImageNet_LT)

    def directory(self, root: str | Path) -> Path:
        """``root/<folder>``, or ``root/<other folder>`` when only that one exists."""
        base = Path(root).expanduser()
        for name in (self.folder, *self.other_folders):
            if (base / name).is_dir():
                return base / name
        return base / self.folder

    def is_available(self, root: str | Path | None) -> bool:
        """Cheap check (a few `exists` calls) that the expected files are present."""
        if self.kind == "toy":
            return True
        if root is None:
            return False
        base = self.directory(root)
        return base.is_dir() and all((base / rel).exists() for rel in self.required)
