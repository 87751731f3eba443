"""`--config FILE` of `attdarts search` and `attdarts train`: settings from a TOML or JSON file.

The keys are the settings as a run directory's `config.json` writes them (`batch_size`, `lr_min`,
`space_file`, ...; `batch-size` works too) and the names of the other options (`out`, `device`,
`threads`, `seeds`, `quiet`, ...). A file value becomes the option's default, so an option given on
the command line wins over the file. Relative paths in the file (`space_file`, `genotype_file`,
`data_dir`, `out`, `folder:PATH`) are read relative to the file, so it works from any directory.
A run's own `config.json` is a valid config file: `attdarts search --config RUN/config.json --out
AGAIN` repeats the run (a training run's `genotype.geno` beside it is its genotype file); the
facts a training run records beside its settings (`parameters`, `mean`, ...) are ignored.

The file's text is copied into the new run directory as `config-file.toml` (or `.json`), beside
the resolved settings of `config.json`.

Values are checked as strictly as the command line checks the same option: a whole number for an
integer option (not 2.5, not 2.0, not true), a number for a numeric one (not true), true or false
for a flag, text for the others. A UTF-8 byte-order mark (which Windows editors write) is
accepted, as in genotype files.

Implementation: the option is eager, so its callback runs before the others are read; it puts
the file's values into click's `default_map`, which is what an option falls back to when the
command line does not give it. Settings without an option of their own (training's `cutout`,
`drop_path_prob`, ...) are kept in the context for the command to pass on.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from attdarts.files import atomic_write_text
from attdarts.language.errors import suggest

_META_KEY = "attdarts.config_file"
RECORD_NAME = "config-file"  # + the file's suffix, in the run directory


@dataclass(frozen=True)
class Key:
    """How one key of the file reaches its option: the parameter's name and a conversion of
    the file's value into what the command line would give."""

    param: str
    convert: Callable[[Any, Path], Any] | None = None


@dataclass(frozen=True)
class ConfigFile:
    """A config file as read: its path and text, and the settings that have no option."""

    path: Path
    text: str
    extra: dict[str, Any] = field(default_factory=dict)


# conversions of file values (the second argument is the file's folder)

def relative_path(value: Any, folder: Path) -> str:
    path = Path(_text(value)).expanduser()
    return str(path if path.is_absolute() else folder / path)


def dataset_path(value: Any, folder: Path) -> str:
    text = _text(value)
    if text.startswith("folder:"):
        return "folder:" + relative_path(text[len("folder:"):], folder)
    return text


def inverted(value: Any, folder: Path) -> bool:
    """A setting stored as `augment = true` for a flag spelled `--no-augment` (and so on)."""
    return not _boolean_value(value)


def joined(value: Any, folder: Path) -> str:
    """A list (arch_betas, seeds) as its comma-separated option value."""
    if isinstance(value, (list, tuple)):
        for item in value:
            _number(item, whole=False)
        return ",".join(str(item) for item in value)
    return _text(value)


def as_text(value: Any, folder: Path) -> str:
    """A choice the file may write as a number (`order = 2`): a whole number or text."""
    if isinstance(value, str):
        return value
    return str(_number(value, whole=True))


class _Refused(Exception):
    """A file value of the wrong type; `what` says what was expected."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Refused("text")
    return value


def _number(value: Any, *, whole: bool) -> int | float:
    """A TOML/JSON number as the command line would take it: no bool, and for a whole number
    no fraction (2.0 included, as `--epochs 2.0` is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            whole and not isinstance(value, int)):
        raise _Refused("a whole number" if whole else "a number")
    return value


def _checked(param: click.Parameter, value: Any) -> Any:
    """`value` from a file for `param`, refused unless the command line could have given it:
    text goes through click's conversion as a typed argument would."""
    if isinstance(param, click.Option) and param.is_flag:
        return _boolean_value(value)
    if isinstance(value, str):
        return value
    if isinstance(param.type, click.types.IntParamType):
        return _number(value, whole=True)
    if isinstance(param.type, click.types.FloatParamType):
        return _number(value, whole=False)
    raise _Refused("text")


def _boolean_value(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Refused("true or false")
    return value


def config_option(renamed: Mapping[str, Key] | None = None, *,
                  extra: Callable[[], Iterable[str]] | None = None, recorded: Iterable[str] = (),
                  companions: Mapping[str, str] | None = None):
    """The `--config FILE` option of a command.

    A key of the file names the option of the same name (`batch_size` -> `--batch-size`), or
    the entry of `renamed` (a setting whose option is spelled otherwise, such as `augment` and
    `--no-augment`). `extra()` lists settings without an option (kept for the command, see
    `loaded`); `recorded` lists keys a run's config.json holds that are facts, not settings
    (ignored). `companions` maps a key to a file name: when the key is missing and that file lies
    beside the config file, it is the key's value (a training run's genotype.geno).
    """
    recorded = frozenset(recorded)

    def callback(ctx: click.Context, param: click.Parameter, value: Path | None):
        if value is None:
            return None
        table = _table(ctx.command)
        table.update(renamed or {})
        kept_names = frozenset(extra() if extra is not None else ()) - set(table)
        settings = _read(value)
        folder = value.resolve().parent
        for key, name in (companions or {}).items():
            if key not in settings and (folder / name).is_file():
                settings[key] = name
        defaults, kept = {}, {}
        params = {param.name: param for param in ctx.command.params}
        for key, setting in settings.items():
            if key in recorded:
                continue
            if key in kept_names:
                kept[key] = setting  # checked by the settings' own (strict) model
            elif key in table:
                entry = table[key]
                try:
                    defaults[entry.param] = (_checked(params[entry.param], setting)
                                             if entry.convert is None
                                             else entry.convert(setting, folder))
                except _Refused as refused:
                    raise click.BadParameter(
                        f"{value}: '{key}' is {json.dumps(setting)}, expected {refused.what} "
                        f"(as the option takes it on the command line)", ctx=ctx,
                        param=param) from None
            else:
                known = sorted(set(table) | kept_names)
                hint = suggest(key, known)
                raise click.BadParameter(
                    f"{value}: unknown setting '{key}'; " + (hint or f"known: {', '.join(known)}"),
                    ctx=ctx, param=param)
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
        ctx.meta[_META_KEY] = ConfigFile(value, value.read_text(encoding="utf-8-sig"), kept)
        return value

    return click.option(
        "--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        is_eager=True, callback=callback,
        help="Read settings from a TOML or JSON file whose keys are config.json's fields (or "
             "option names); options on the command line win. RUN_DIR/config.json repeats a "
             "run. The file is copied into the run directory.")


# options a file cannot set: the file itself, and continuing a run (which has its settings)
_NOT_FROM_FILES = frozenset({"config_file", "resume", "resume_dir", "help"})
# keys whose file values need converting: paths relative to the file, lists, numbers as choices
_CONVERSIONS: dict[str, Callable[[Any, Path], Any]] = {
    "space_file": relative_path, "genotype_file": relative_path, "data_dir": relative_path,
    "out": relative_path, "dataset": dataset_path, "seeds": joined, "arch_betas": joined,
    "order": as_text,
}


def _table(command: click.Command) -> dict[str, Key]:
    """Each parameter under its name and its long option's name (`out_dir` and `out`)."""
    table = {}
    for param in command.params:
        if param.name is None or param.name in _NOT_FROM_FILES:
            continue
        names = [param.name] + [opt.lstrip("-").replace("-", "_") for opt in param.opts
                                if opt.startswith("--")]
        for name in names:
            table[name] = Key(param.name, _CONVERSIONS.get(name, _CONVERSIONS.get(param.name)))
    return table


def _read(path: Path) -> dict[str, Any]:
    """The file's table with keys as settings are spelled (`batch-size` -> `batch_size`)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the text
    except (OSError, UnicodeDecodeError) as error:
        raise click.BadParameter(f"cannot read {path} ({error.__class__.__name__})",
                                 param_hint="--config") from None
    try:
        if path.suffix.lower() == ".json":
            settings = json.loads(text)
        else:
            settings = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise click.BadParameter(f"{path}: not valid {kind} ({error})",
                                 param_hint="--config") from None
    if not isinstance(settings, dict):
        raise click.BadParameter(f"{path}: expected a table of settings, got "
                                 f"{type(settings).__name__}", param_hint="--config")
    return {str(key).replace("-", "_"): value for key, value in settings.items()
            if value is not None}


def loaded(ctx: click.Context | None = None) -> ConfigFile | None:
    """The config file this command read, if any."""
    ctx = ctx if ctx is not None else click.get_current_context()
    return ctx.meta.get(_META_KEY)


def refuse_with_resume(resume: object) -> None:
    if resume is not None and loaded() is not None:
        raise click.UsageError("--config starts a new run; --resume takes its settings from the "
                               "run directory (give one of them)")


def record(config: ConfigFile | None, run_dir: Path | None) -> None:
    """Copy the config file into the run directory (config-file.toml / .json)."""
    if config is None or run_dir is None or not Path(run_dir).is_dir():
        return
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 writes
        return
    suffix = ".json" if config.path.suffix.lower() == ".json" else ".toml"
    target = Path(run_dir) / f"{RECORD_NAME}{suffix}"
    if target.resolve() != config.path.resolve():
        atomic_write_text(target, config.text)
