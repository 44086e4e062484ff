"""`flywheel import`: a user's images (a folder, or a COCO file with its boxes or masks) as tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.base import _progress, _settings, clear_errors

app = typer.Typer()


@app.command("import")
@clear_errors
def import_folder(
    folder: Annotated[Path, typer.Argument(help="A folder of images (searched recursively), or a COCO file (.json) "
                                                 "whose boxes (or, for a segmentation config, masks) become "
                                                 "pre-annotations.", exists=True)],
    project: Annotated[str | None, typer.Option(help="Project title (default: params.yaml project.title).")] = None,
    config: Annotated[Path | None, typer.Option(help="Labeling config (default: params.yaml project.config).")] = None,
    images: Annotated[Path | None, typer.Option(help="A COCO file's image folder: its file_names are relative to it "
                                                      "(default: beside the file, then its images/).")] = None,
) -> None:
    """Import a folder of images as tasks; files already imported (same content) are skipped.

    A COCO file's images are imported the same way, and its boxes or masks are written as pre-annotations
    (model version "coco:<file>") for people to confirm: flywheel never writes annotations."""
    from components.adapters.label_studio import LabelStudio
    from components.core.labeling_config import load_labeling_config
    from components.core.params import load_params
    from components.studies.datasets import import_dataset

    settings = _settings()
    params = load_params()
    label_studio = LabelStudio.from_settings(settings)
    # params.yaml's attached project (project.id), unless --project or --config says where else
    attached = label_studio.project(params.project.id) if params.project.id and not (project or config) else None
    labeling = attached.config if attached else load_labeling_config(config or params.project.config)
    imported = import_dataset(label_studio, project or params.project.title, labeling, folder,
                              progress=_progress("hashing images"), images_dir=images, attached=attached)
    result = imported.result
    typer.echo(f"project {imported.project.id}: {len(result.created)} tasks created, {result.skipped} already there")
    if imported.pre_annotations is not None:
        typer.echo(f"{imported.pre_annotations} pre-annotations from {folder.name}")
