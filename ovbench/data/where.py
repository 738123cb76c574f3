"""Where the publishers host each dataset and how to unpack it (`ovbench data where`).

Nothing here downloads anything: it is the distribution knowledge of the benchmark written
down once (docs/datasets.md#landdiscover50k, docs/datasets.md#evaluation-sets,
docs/datasets.md#coco-stuff and docs/datasets.md#distribution-problems), including the ways
the publishers' own instructions go wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovbench.errors import RegistryError, did_you_mean

__all__ = ["HostingEntry", "HOSTING", "where_names", "find_hosting", "render_where"]


@dataclass(frozen=True)
class HostingEntry:
    key: str
    title: str
    #: where the files are published
    hosts: tuple[str, ...]
    #: how to unpack and lay them out, in order
    steps: tuple[str, ...]
    #: what ovbench expects under the data root
    layout: tuple[str, ...]
    #: how to check the result
    verify: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: dataset names (catalog names) this entry answers for
    aliases: tuple[str, ...] = field(default_factory=tuple)


_OVRSISS_TEST = "HuggingFace dataset Stev929/OVRSISS_test (https://huggingface.co/datasets/Stev929/OVRSISS_test): the GSNet authors' preprocessed evaluation sets"

HOSTING: dict[str, HostingEntry] = {
    entry.key: entry
    for entry in (
        HostingEntry(
            key="landdiscover50k",
            title="LandDiscover50K (LD50K): the training set, 51,846 images, 40 classes",
            hosts=("HuggingFace dataset Stev929/LandDiscover50K (https://huggingface.co/datasets/Stev929/LandDiscover50K)",),
            steps=(
                "Download all 14 parts of the multi-volume zip into ONE folder: LD50KSplit.zip and LD50KSplit.z01 ... LD50KSplit.z13.",
                "Extract with 7-Zip from that folder: `7z x LD50KSplit.zip` (7z finds the .z01-.z13 volumes itself; "
                "Debian/Ubuntu: `apt-get install p7zip-full`).",
                "Do NOT join the parts with `cat LD50KSplit.z* > all.zip` and `unzip`: that route, given in the GSNet README, "
                "corrupts or silently drops files (GSNet issues #2, #5, #10; one user ended with 2,489 TR_Image files for 51,846 GT_ID masks).",
                "Place (or link) the extracted LandDiscover50K/ folder under your data root.",
            ),
            layout=(
                "LandDiscover50K/TR_Image/*.png   RGB images",
                "LandDiscover50K/GT_ID/*.png      single-channel class ids 0-39, paired by file stem (0 = background, ignored)",
            ),
            verify=(
                "Count both folders: 51,846 files each (`ls LandDiscover50K/TR_Image | wc -l`, same for GT_ID); fewer TR_Image files "
                "than GT_ID masks means a broken extraction. The archive lists about 103,693 entries (images + masks).",
                "`ovbench data check landdiscover50k --data-root DATA_ROOT` decodes every file and lists images without masks.",
            ),
            notes=(
                "The 10K-40K subsets and the per-source sets (LoveDA, DeepGlobe, OEM, SIOR, SOTA) are image-only folders next to "
                "LandDiscover50K/ whose masks come from GT_ID; their membership lists are not distributed. Seeded subsets of the "
                "full set can be drawn by name instead (e.g. landdiscover50k:size=10000,seed=0).",
            ),
            aliases=("landdiscover50k", "ld50k", "landdiscover10k", "landdiscover20k", "landdiscover30k", "landdiscover40k",
                     "loveda", "deepglobe", "oem", "sior", "sota"),
        ),
        HostingEntry(
            key="potsdam",
            title="ISPRS Potsdam (evaluation): 5 queries, 6 evaluator classes, clutter (5) ignored",
            hosts=(
                _OVRSISS_TEST + " (folder PotsdamSplit/).",
                "Raw tiles: ISPRS 2D Semantic Labeling benchmark, Potsdam "
                "(https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx): "
                "2_Ortho_RGB.zip (top_potsdam_<a>_<b>_RGB.tif, 6000x6000) and 5_Labels_all.zip (top_potsdam_<a>_<b>_label.tif, colour-coded).",
            ),
            steps=(
                "Preprocessed copy: place its PotsdamSplit/ folder under the data root.",
                "From the raw tiles: `ovbench data prepare potsdam --raw DIR --out DATA_ROOT` (DIR holds the two zips or the "
                "extracted .tif files). It cuts 512x512 crops named <a>_<b>_<x0>_<y0>_<x1>_<y1>.png with the geometry of "
                "mmsegmentation's Potsdam converter and maps the label colours to ids; all 38 labelled tiles by default "
                "(the paper lists 38 Potsdam images), `--tiles val` for mmsegmentation's 14-tile validation split.",
            ),
            layout=(
                "PotsdamSplit/img_dir/val/*.png   512x512 RGB crops",
                "PotsdamSplit/ann_dir/val/*.png   ids 0 impervious surface, 1 building, 2 low vegetation, 3 tree, 4 car, 5 clutter (ignored)",
            ),
            verify=("`ovbench data check potsdam --data-root DATA_ROOT`",),
            notes=("That the authors' crops came from the mmsegmentation converter is inferred from their names, not documented.",),
            aliases=("potsdam", "potsdam_all", "isprs-potsdam"),
        ),
        HostingEntry(
            key="floodnet",
            title="FloodNet (evaluation, val + test merged): 10 classes, Background (0) queried but ignored",
            hosts=(
                _OVRSISS_TEST + " (folder FloodNet/).",
                "Raw release: FloodNet-Supervised_v1.0, linked from https://github.com/BinaLab/FloodNet-Supervised_v1.0 "
                "(Rahnemoonfar et al., IEEE Access 2021).",
            ),
            steps=(
                "Preprocessed copy: place its FloodNet/ folder under the data root.",
                "From the raw release: unpack it, then `ovbench data prepare floodnet --raw DIR --out DATA_ROOT`, DIR being "
                "FloodNet-Supervised_v1.0/ (with val/val-org-img, val/val-label-img, test/test-org-img, test/test-label-img). "
                "Images are copied byte for byte; labels <id>_lab.png are renamed <id>.png so that they pair by stem.",
            ),
            layout=(
                "FloodNet/val+test/img/*.jpg   RGB images (JPEG, unlike the other sets)",
                "FloodNet/val+test/lbl/*.png   single-channel ids 0-9",
            ),
            verify=("`ovbench data check floodnet --data-root DATA_ROOT`",),
            aliases=("floodnet",),
        ),
        HostingEntry(
            key="flair",
            title="FLAIR (evaluation, test split): 12 queries, 13 evaluator classes, other (12) ignored",
            hosts=(
                _OVRSISS_TEST + " (folder FLAIR/).",
                "Original release: FLAIR #1 by IGN (Garioud et al. 2024). ovbench has no converter for it: the preprocessing the "
                "GSNet authors applied is not published, so use their copy.",
            ),
            steps=("Place the FLAIR/ folder of the preprocessed copy under the data root.",),
            layout=("FLAIR/test/image/*.png", "FLAIR/test/mask/*.png   ids 0-11, 12 = other (ignored)"),
            verify=("`ovbench data check flair --data-root DATA_ROOT`",),
            aliases=("flair", "flair_test"),
        ),
        HostingEntry(
            key="fast",
            title="FAST, the SAMRS subset (evaluation, val split): 37 classes, 255 ignored",
            hosts=(
                _OVRSISS_TEST + ".",
                "Original: part of SAMRS (Wang et al. 2024, https://github.com/ViTAE-Transformer/SAMRS).",
            ),
            steps=(
                "Place the folder under the data root in either documented layout; ovbench uses the first that exists.",
            ),
            layout=(
                "SAMRS/FAST/val/images/*.png + SAMRS/FAST/val/semlabels/gray/*.png   (the layout the GSNet code registers)",
                "FAST/val/images/*.png + FAST/val/semlabels/*.png                    (the layout the GSNet README shows)",
            ),
            verify=("`ovbench data info fast --data-root DATA_ROOT` says which layout matched; `ovbench data check fast` decodes every file.",),
            notes=("The GSNet README and code disagree on this layout; both are accepted.",),
            aliases=("fast", "fast_val", "samrs-fast"),
        ),
        HostingEntry(
            key="coco-stuff",
            title="COCO-Stuff-164k (the methods' natural-image training set): 171 classes, 255 ignored",
            hosts=(
                "Images: COCO 2017 train2017.zip and val2017.zip from https://cocodataset.org",
                "Labels: stuffthingmaps_trainval2017.zip from https://github.com/nightrome/cocostuff",
            ),
            steps=(
                "Unzip the images and the stuff+thing maps.",
                "Convert the maps to the 171 contiguous class ids the methods train with, using the preparation script of the "
                "method you reproduce (CAT-Seg: datasets/prepare_coco_stuff.py; SAN and zsseg: datasets/prepare_coco_stuff_164k_sem_seg.py).",
                "`ovbench data info coco-stuff-val --data-root DATA_ROOT` names the folders ovbench reads.",
            ),
            layout=("train2017 / val2017 images and their converted label maps (see `ovbench data info coco-stuff-train`)",),
            notes=(
                "Registered by the methods as coco_2017_train_stuff_all_sem_seg (CAT-Seg, SED) or coco_2017_train_stuff_sem_seg "
                "(SAN, OV-Seg, SCAN, EBSeg).",
            ),
            aliases=("coco-stuff", "coco-stuff-train", "coco-stuff-val", "coco_stuff", "cocostuff"),
        ),
        HostingEntry(
            key="toyland",
            title="toyland: the embedded synthetic benchmark",
            hosts=("Nowhere: every split is generated in process from a seed.",),
            steps=("Nothing to download or unpack.",),
            layout=("none",),
            aliases=("toyland",),
        ),
    )
}


def where_names() -> list[str]:
    return list(HOSTING)


def _lookup_table() -> dict[str, str]:
    table = {}
    for key, entry in HOSTING.items():
        for alias in (key, *entry.aliases):
            table[alias.casefold()] = key
    return table


def find_hosting(name: str) -> HostingEntry:
    """The entry for a dataset name (catalog names, parameterised names and aliases accepted)."""
    base = name.split(":", 1)[0].strip().casefold()
    if base.startswith("toyland"):
        return HOSTING["toyland"]
    table = _lookup_table()
    if base in table:
        return HOSTING[table[base]]
    raise RegistryError(f"no hosting information for dataset '{name}'{did_you_mean(base, table, 0.6)}; known: {', '.join(HOSTING)}")


def render_where(entry: HostingEntry) -> str:
    """Plain text, one section per aspect."""
    lines = [entry.title, "", "Hosted at:"]
    lines += [f"  - {host}" for host in entry.hosts]
    lines += ["", "How to unpack:"]
    lines += [f"  {i}. {step}" for i, step in enumerate(entry.steps, start=1)]
    lines += ["", "Expected under the data root:"]
    lines += [f"  {item}" for item in entry.layout]
    if entry.verify:
        lines += ["", "Check:"]
        lines += [f"  - {item}" for item in entry.verify]
    if entry.notes:
        lines += ["", "Notes:"]
        lines += [f"  - {item}" for item in entry.notes]
    return "\n".join(lines) + "\n"
