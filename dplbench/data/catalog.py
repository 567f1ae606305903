"""Registers the 17 standard datasets (docs/protocols.md §2.1, §2.4, §5.5a) as `DatasetInfo` entries. No torch."""

from __future__ import annotations

from dplbench.catalog import DATASETS
from dplbench.data.info import DatasetInfo
from dplbench.data.templates import CUSTOM_TEMPLATES

_STD = "dplbench.data.standard"
_IMNET = "dplbench.data.imagenet"
_LT = "dplbench.data.longtail"


def _json_dataset(name: str, description: str, folder: str, n: int, image_dir: str, split: str,
                  sizes: tuple[int, int, int], layout_images: str | None = None) -> DatasetInfo:
    images = layout_images or f"{image_dir}/"
    return DatasetInfo(
        name=name, description=description, folder=folder, num_classes=n, template=CUSTOM_TEMPLATES[name],
        kind="standard", loader=f"{_STD}:load_split_json", required=(split,),
        layout=f"{folder}/{{{images}, {split}}}", image_dir=image_dir, split_file=split, split_sizes=sizes,
    )


def _imagenet_variant(name: str, description: str, folder: str, n: int, image_dir: str, loader: str,
                      layout_images: str, test_size: int) -> DatasetInfo:
    return DatasetInfo(
        name=name, description=description, folder=folder, num_classes=n, template=CUSTOM_TEMPLATES[name],
        kind="standard", loader=loader, test_only=True, required=(image_dir, "classnames.txt"),
        layout=f"{folder}/{{{layout_images}, classnames.txt}}", image_dir=image_dir,
        split_sizes=(0, 0, test_size),
    )


STANDARD_DATASETS: tuple[DatasetInfo, ...] = (
    DatasetInfo(
        name="imagenet", description="ImageNet-1k (ILSVRC-2012); val used as test", folder="imagenet",
        num_classes=1000, template=CUSTOM_TEMPLATES["imagenet"], kind="standard", loader=f"{_IMNET}:load_imagenet",
        required=("images/train", "images/val", "classnames.txt"),
        layout="imagenet/{images/train/<wnid>/, images/val/<wnid>/, classnames.txt}", image_dir="images",
        split_sizes=(None, 0, 50000),
    ),
    _json_dataset("caltech101", "Caltech101 (100 object classes)", "caltech-101", 100, "101_ObjectCategories",
                  "split_zhou_Caltech101.json", (4128, 1649, 2465)),
    _json_dataset("oxford_pets", "Oxford-IIIT Pets (37 breeds)", "oxford_pets", 37, "images",
                  "split_zhou_OxfordPets.json", (2944, 736, 3669)),
    _json_dataset("stanford_cars", "Stanford Cars (196 models)", "stanford_cars", 196, "",
                  "split_zhou_StanfordCars.json", (6509, 1635, 8041), layout_images="cars_train/, cars_test/"),
    _json_dataset("oxford_flowers", "Oxford Flowers-102", "oxford_flowers", 102, "jpg",
                  "split_zhou_OxfordFlowers.json", (4093, 1633, 2463)),
    _json_dataset("food101", "Food-101", "food-101", 101, "images", "split_zhou_Food101.json", (50500, 20200, 30300)),
    DatasetInfo(
        name="fgvc_aircraft", description="FGVC-Aircraft (100 variants), official train/val/test lists",
        folder="fgvc_aircraft", num_classes=100, template=CUSTOM_TEMPLATES["fgvc_aircraft"], kind="standard",
        loader=f"{_STD}:load_fgvc_aircraft",
        required=("images", "variants.txt", "images_variant_train.txt", "images_variant_val.txt",
                  "images_variant_test.txt"),
        layout="fgvc_aircraft/{images/, variants.txt, images_variant_train.txt, images_variant_val.txt, "
               "images_variant_test.txt}",
        image_dir="images", split_file="images_variant_{split}.txt", split_sizes=(3334, 3333, 3333),
    ),
    _json_dataset("sun397", "SUN397 scenes", "sun397", 397, "SUN397", "split_zhou_SUN397.json", (15880, 3970, 19850)),
    _json_dataset("dtd", "Describable Textures (47 classes)", "dtd", 47, "images",
                  "split_zhou_DescribableTextures.json", (2820, 1128, 1692)),
    _json_dataset("eurosat", "EuroSAT satellite land use (10 classes)", "eurosat", 10, "2750",
                  "split_zhou_EuroSAT.json", (13500, 5400, 8100)),
    _json_dataset("ucf101", "UCF101 actions (middle frames)", "ucf101", 101, "UCF-101-midframes",
                  "split_zhou_UCF101.json", (7639, 1898, 3783)),
    _imagenet_variant("imagenetv2", "ImageNetV2 matched-frequency (test only)", "imagenetv2", 1000,
                      "imagenetv2-matched-frequency-format-val", f"{_IMNET}:load_imagenetv2",
                      "imagenetv2-matched-frequency-format-val/0..999/", 10000),
    _imagenet_variant("imagenet_sketch", "ImageNet-Sketch (test only)", "imagenet-sketch", 1000, "images",
                      f"{_IMNET}:load_imagenet_folder_variant", "images/<wnid>/", 50889),
    _imagenet_variant("imagenet_a", "ImageNet-A, 200-way (test only)", "imagenet-adversarial", 200, "imagenet-a",
                      f"{_IMNET}:load_imagenet_folder_variant", "imagenet-a/<wnid>/", 7500),
    _imagenet_variant("imagenet_r", "ImageNet-R, 200-way (test only)", "imagenet-rendition", 200, "imagenet-r",
                      f"{_IMNET}:load_imagenet_folder_variant", "imagenet-r/<wnid>/", 30000),
    DatasetInfo(
        name="imagenet_lt", description="ImageNet-LT (LIFT split files; many/medium/few buckets)",
        folder="imagenet_lt", num_classes=1000, template=CUSTOM_TEMPLATES["imagenet_lt"], kind="standard",
        loader=f"{_LT}:load_lt_dataset",
        required=("ImageNet_LT_train.txt", "ImageNet_LT_test.txt", "classnames.txt"),
        layout="imagenet_lt/ (or ImageNet_LT/){ImageNet_LT_train.txt, ImageNet_LT_test.txt, [ImageNet_LT_val.txt], "
               "classnames.txt} with the images (train/<wnid>/, val/<wnid>/) in images/, next to the split files, "
               "or in imagenet/images/",
        image_dir="images", split_file="ImageNet_LT", split_sizes=(None, 20000, 50000),
        other_folders=("ImageNet_LT",),
    ),
    DatasetInfo(
        name="places_lt", description="Places-LT (LIFT split files; many/medium/few buckets)",
        folder="places_lt", num_classes=365, template=CUSTOM_TEMPLATES["places_lt"], kind="standard",
        loader=f"{_LT}:load_lt_dataset",
        required=("Places_LT_train.txt", "Places_LT_test.txt", "classnames.txt"),
        layout="places_lt/ (or Places_LT/){Places_LT_train.txt, Places_LT_test.txt, [Places_LT_val.txt], "
               "classnames.txt} with the Places365 images in images/ or next to the split files",
        image_dir="images", split_file="Places_LT", split_sizes=(62500, 7300, 36500),
        other_folders=("Places_LT",),
    ),
)

for _info in STANDARD_DATASETS:
    DATASETS.add(_info.name, _info, description=_info.description)
