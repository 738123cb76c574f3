"""`predict`: any vocabulary on any image or scene."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ovbench.errors import ConfigError


def _pair(text: str, option: str) -> list[float]:
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 2:
        raise ConfigError(f"{option}: expected LOW,HIGH (two numbers separated by a comma), got {text!r}")
    return values


def _scaling(percentiles: Optional[str], scale_ranges: List[str]) -> object:
    if percentiles and scale_ranges:
        raise ConfigError("give either --percentiles or --scale-range, not both")
    if percentiles:
        return {"percentiles": _pair(percentiles, "--percentiles")}
    if scale_ranges:
        pairs = [_pair(text, "--scale-range") for text in scale_ranges]
        return {"range": pairs[0] if len(pairs) == 1 else pairs}
    return None


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ovbench` app."""

    @app.command("predict")
    def predict_command(
        images: List[Path] = typer.Argument(..., help="Images to segment: PNG, JPEG, TIFF or GeoTIFF (any size).", show_default=False),
        method: str = typer.Option(..., "--method", "-m", help="Method name (see `ovbench methods`) or a method YAML path."),
        classes: str = typer.Option(
            ..., "--classes",
            help='Class names separated by commas, synonyms of a class by "|" ("road|street,building,flooded road"), '
                 "or a YAML/JSON vocabulary file. Label i is class i.",
        ),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Model weights (ovbench or official checkpoint)."),
        out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Folder for the outputs (created if missing)."),
        bands: Optional[str] = typer.Option(
            None, "--bands", help="1-based bands used as R,G,B, e.g. 3,2,1 (or one band, shown as grey); needed for multi-band images."
        ),
        percentiles: Optional[str] = typer.Option(
            None, "--percentiles", help="Scale each band from its LOW to its HIGH percentile to 0..255, e.g. 2,98 (16-bit and float images)."
        ),
        scale_ranges: Optional[List[str]] = typer.Option(
            None, "--scale-range",
            help="Scale LOW..HIGH to 0..255, e.g. 0,3000: once for all bands or once per band, in --bands order.",
        ),
        nodata: Optional[str] = typer.Option(
            None, "--nodata", help="Value of missing pixels (labelled nodata), overriding the file's; 'none' ignores the file's."
        ),
        score_maps: bool = typer.Option(False, "--score-maps", help="Also write per-class scores: a float32 TIFF, one band per class."),
        tile: int = typer.Option(1024, "--tile", help="Tile side in pixels: scenes are predicted one tile at a time."),
        overlap: Optional[int] = typer.Option(
            None, "--overlap", help="Pixels neighbouring tiles share; each keeps its half (at most tile/2; default 128, at most tile/4)."
        ),
        overlay_max_side: int = typer.Option(2048, "--overlay-max-side", help="Larger overlays are reduced to this longer side."),
        reader: str = typer.Option("auto", "--reader", help="auto, rasterio, tifffile or pillow (auto: rasterio for TIFF where installed)."),
        scale: Optional[str] = typer.Option(
            None, "--scale", help="Model scale overlay from the method YAML (e.g. tiny); default: the checkpoint's, else full."
        ),
        clip_weights: Optional[str] = typer.Option(None, "--clip-weights", help="CLIP weights file or open_clip tag."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Load checkpoints without weights_only (only for files you trust)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Segment images with any vocabulary: a label raster, a colour overlay and, on request,
        per-class score maps per image (docs/predict.md).

        GeoTIFF labels keep the input's CRS and transform. Large scenes are predicted tile by tile with the method's own inference recipe, so memory stays that of one tile.

        Example: ovbench predict --method catseg --checkpoint model.pth scene.tif --classes "road,building,flooded road" --bands 3,2,1 --percentiles 2,98
        """
        from ovbench.data.raster import RasterSettings
        from ovbench.predict import PredictOptions, full_stack_bytes, parse_classes, predict_scene, prepare_inputs
        from ovbench.progress import ProgressReporter, stderr_console

        from ovbench.registry import method_scales

        vocabulary = parse_classes(classes)
        method_scales(method)  # an unknown method fails now, not after the inputs were read
        settings = RasterSettings.from_values(bands, _scaling(percentiles, list(scale_ranges or [])), nodata)
        options = PredictOptions(
            out_dir=out, tile=tile, overlap=overlap, score_maps=score_maps, overlay_max_side=overlay_max_side,
            raster=settings, reader=reader, method=method, checkpoint=str(checkpoint) if checkpoint else None,
        )
        items = prepare_inputs(images, options)  # every bad input fails before the model is built

        from ovbench.runner import load_segmenter

        segmenter, _, torch_device = load_segmenter(
            method, checkpoint=checkpoint, scale=scale, clip_weights=clip_weights, device=device, trust_checkpoint=trust_checkpoint
        )
        print_line = typer.echo
        with ProgressReporter(quiet=quiet, console=stderr_console) as progress:
            for item in items:
                print_line(f"{item.path}: read with {item.reader} ({item.description}; {item.plan.describe()})")
                result = predict_scene(segmenter, item, vocabulary, options, torch_device, progress)
                stack_mb = full_stack_bytes(len(vocabulary), result.height, result.width) / 2**20
                tiles = f"{result.tiles} tiles of {tile}px" if result.tiles > 1 else "1 tile (the whole image)"
                print_line(
                    f"  {tiles} in {result.seconds:.1f} s "
                    f"(the full {len(vocabulary)}-class score stack would be {stack_mb:.0f} MiB; never held)"
                )
                for kind, path in result.outputs.items():
                    print_line(f"  wrote {kind}: {path}")
                for note in result.notes:
                    print_line(f"  note: {note}")
