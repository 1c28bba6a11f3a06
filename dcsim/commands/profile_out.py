"""Where a fitted or derived profile is written: the output path checked before any work, the YAML and the
figure beside it, each whole or not at all (shared by `dcsim fit` and `dcsim fit --derive`)."""

from __future__ import annotations

from pathlib import Path

from dcsim.errors import UserError


def check_out(path: str, force: bool = False, figure: bool = True) -> Path:
    """The profile path to write, refused before any work if it cannot be written, or if it (or the PNG beside
    it, where one will be drawn) is a file that dcsim did not write (unless force)."""
    from dcsim.outputs import check_file, owned_figure, owned_profile

    out = Path(path)
    if out.suffix not in (".yaml", ".yml"):
        raise UserError("the profile file must end in .yaml", out, "-o")
    if not out.parent.is_dir():
        raise UserError("output folder does not exist", out.parent, "-o")
    out = check_file(out, force, owned_profile)
    if figure:
        check_file(out.with_suffix(".png"), force, lambda png: owned_figure(png, out))
    return out


def write_figure(prof, rows, out: Path) -> Path:
    """The profile's curves against its measured points, as a PNG beside the YAML `out` (via a temporary file:
    a failed plot leaves no half-written PNG)."""
    from dcsim.outputs import write_file
    from dcsim.profiles.plots import fit_figure

    png = out.with_suffix(".png")
    write_file(png, lambda tmp: fit_figure(prof, rows, tmp))
    return png


def write_profile(prof, path: Path) -> None:
    """Profile YAML via a temporary file and a rename, so a failed write leaves nothing half-written."""
    import yaml

    from dcsim.outputs import write_file

    text = yaml.safe_dump(prof.model_dump(mode="json", exclude_none=True), sort_keys=False, width=110)
    write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
