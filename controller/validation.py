"""Shared helpers for validating files people write (spec and inventory YAML).

One reader for both: ``load_yaml`` takes a file that is UTF-8 text (a UTF-8 byte order mark is
allowed) and one YAML document holding a mapping, and refuses, in one line naming the file and
where in it, what PyYAML would accept silently or turn into a traceback:

- a file that is missing, a folder, not a regular file, unreadable, or larger than
  ``MAX_FILE_BYTES``;
- bytes that are not UTF-8 (the byte offset and line of the first bad byte), UTF-16 or UTF-32
  text (its byte order mark), and characters YAML does not allow (a NUL says: a binary file);
- a syntax error (``FILE:LINE:COLUMN``), an empty file, several documents, a document that is
  not a mapping;
- a key given twice in one mapping, at any depth (PyYAML keeps the last one silently);
- any tag, ``!!python/object``, ``!!binary``, ``!foo`` or ``!!str`` alike: a spec is plain data.
  (Anchors, aliases and ``<<`` merges stay: they are plain data too.)

``parse`` validates the data with a pydantic model and turns the first error into one line: the
dotted key path, what is wrong, the bad value (lists and mappings too, shortened), the keys that
are allowed where an unknown one was given, and which board or model the key belongs to.
"""

from __future__ import annotations

import codecs
import difflib
import re
import stat
import types
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from yaml.events import MappingStartEvent, ScalarEvent, SequenceStartEvent, StreamEndEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controller.errors import ConfigError

# Names end up in file paths, job ids and (on remote boards) command lines, so they are
# restricted to a safe alphabet here, once, instead of being quoted at every use.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


Name = Annotated[str, AfterValidator(_check_name)]


class Strict(BaseModel):
    """Base for every model read from a file: unknown keys are refused, and so are infinite and
    NaN numbers (``.inf`` is valid YAML; no setting means it, and JSON columns cannot store it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


M = TypeVar("M", bound=BaseModel)

# -- one line per validation error ---------------------------------------------------------------

_SHOWN_CHARS = 120
# A list element that has a name is named in the message: ``boards.3`` says less than board 'rk-2'.
_ELEMENT = {"boards": "board", "models": "model", "engines": "engine"}


def shown(value: Any) -> str:
    """``repr`` of a bad value, on one line and at most ``_SHOWN_CHARS`` characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def format_validation_error(source: str, exc: ValidationError, model: type[BaseModel] | None = None,
                            data: Any = None) -> str:
    """One line: ``FILE: key.path: message (got VALUE)`` for the first problem, plus a count.

    With ``model`` (the model validated), an unknown key names the keys allowed there; with
    ``data`` (what was validated), a key inside a named board or model names it."""
    errors = exc.errors()
    first = errors[0]
    # `pth: x.onnx` for `path`: pydantic says path is missing first; the unknown key says why.
    typo = next((e for e in errors if e["type"] == "extra_forbidden" and first["type"] == "missing"
                 and tuple(e["loc"][:-1]) == tuple(first["loc"][:-1])), None)
    if typo is not None:
        errors = [typo, *(e for e in errors if e is not typo)]
        first = typo
    loc = tuple(first["loc"])
    message = _message(first)
    # A value that fits no member of a union (an engine option that is a list) fails once per
    # member, each error's path ending in the member's type: one problem, said once.
    if len(loc) > 1 and model is not None and _is_union(_annotation_at(model, loc[:-1])):
        siblings = [e for e in errors if len(e["loc"]) == len(loc) and tuple(e["loc"][:-1]) == loc[:-1]]
        kinds = list(dict.fromkeys(_message(e).removeprefix("Input should be ") for e in siblings))
        loc = loc[:-1]
        message = "Input should be " + (f"{', '.join(kinds[:-1])} or {kinds[-1]}" if len(kinds) > 1 else kinds[0])
        errors = [first, *(e for e in errors if not any(e is x for x in siblings))]
    where = ".".join(str(p) for p in loc) or "(top level)"
    tail = ""
    if first["type"] == "extra_forbidden":
        message, tail = "unknown key", _allowed_keys(loc, model)
    elif first["type"] == "missing":
        message = "a required key is missing"
    value = "" if _self_explained(first, loc, model) else f" (got {shown(first.get('input'))})"
    owner = _owner(loc, data)
    more = f" [+{len(errors) - 1} more]" if len(errors) > 1 else ""
    return " ".join(f"{source}: {where}: {message}{value}{owner}{tail}{more}".split("\n"))


def _message(error: Any) -> str:
    return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _self_explained(error: Any, loc: tuple[Any, ...], model: type[BaseModel] | None) -> bool:
    """Errors whose value is not worth showing: a missing key (the value is its parent), and a
    check over a whole section (its message names what is wrong; the value is the section)."""
    if error["type"] == "missing" or not loc:
        return True
    return error["type"] == "value_error" and isinstance(error.get("input"), dict) and (
        model is None or _model_at(model, loc) is not None)


def _allowed_keys(loc: tuple[Any, ...], model: type[BaseModel] | None) -> str:
    """``; did you mean 'path'? The keys allowed here: name, path, ...`` for an unknown key at ``loc``."""
    found = _model_at(model, loc[:-1]) if model is not None and loc else None
    if found is None:
        return ""
    allowed = list(found.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"; did you mean {close[0]!r}? The keys" if close else "; the keys"
    return f"{hint} allowed here: {', '.join(allowed)}"


def _owner(loc: tuple[Any, ...], data: Any) -> str:
    """``, in board 'rk-2'``: the innermost named list element the error's key lies in."""
    found, node = "", data
    for i, part in enumerate(loc):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(part, int) and i > 0 and str(loc[i - 1]) in _ELEMENT and isinstance(node, dict):
            name = node.get("name")
            if isinstance(name, str) and tuple(loc[i + 1:]) != ("name",):
                found = f", in {_ELEMENT[str(loc[i - 1])]} {name!r}"
    return found


def _unwrap(annotation: Any) -> Any:
    """The model or container an annotation holds: ``Annotated`` and ``X | None`` taken off."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(members) == 1:
                annotation = members[0]
            elif len(models) == 1:
                annotation = models[0]
            else:
                return annotation
        else:
            return annotation


def _annotation_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The type annotation of the value at ``loc`` (a dotted key path), or None if not found."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is list and isinstance(part, int):
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    return current


def _is_union(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    return get_origin(annotation) is Union or get_origin(annotation) is types.UnionType


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class whose fields are the keys at ``loc`` (a dotted key path), if any."""
    current = _unwrap(_annotation_at(model, loc)) if model is not None else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def parse(model: type[M], data: Any, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, model, data)) from None


# -- reading a file a person wrote ---------------------------------------------------------------

MAX_FILE_BYTES = 4 * 1024 * 1024  # a spec or an inventory is a few kilobytes of text

_BOMS = (  # UTF-32's little-endian mark starts with UTF-16's: longest first
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)


def read_text(path: Path, named_by: str = "") -> str:
    """The text of ``path``: a regular, readable file of UTF-8 text YAML can hold, else a
    ``ConfigError`` naming the file and, for bad bytes, their offset. ``named_by`` says where
    the path came from when not from the command line (``$EDGEFARM_INVENTORY``)."""
    by = f" (named by {named_by})" if named_by else ""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{path}: is a folder, not a file{by}")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: is not a regular file{by}")
        if info.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: is {info.st_size} bytes; a YAML file EdgeFarm reads is text of at most "
                              f"{MAX_FILE_BYTES // (1024 * 1024)} MiB")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found{by}") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot be read: permission denied{by}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}{by}") from None
    return decode_text(data, str(path))


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 ``data`` as text (a leading UTF-8 byte order mark dropped), refusing bytes that are
    not UTF-8, UTF-16/32 text, and characters YAML does not allow, by byte offset."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            raise ConfigError(f"{source}: is {encoding} text (a byte order mark {bom.hex(' ')} at byte offset 0); "
                              "save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data[:nul].count(b"\n") + 1
        raise ConfigError(f"{source}: byte 0x00 at byte offset {nul} (line {line}): a binary file (or UTF-16 text "
                          "without a byte order mark), not UTF-8 YAML text")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = data[:offset].count(b"\n") + 1
        raise ConfigError(f"{source}: not UTF-8 text: byte 0x{data[offset]:02X} at byte offset {offset} (line {line}) "
                          "is not UTF-8; save the file as UTF-8") from None
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        offset = skip + len(text[: bad.start()].encode("utf-8"))
        line = text.count("\n", 0, bad.start()) + 1
        char = ord(bad.group())
        raise ConfigError(f"{source}: character U+{char:04X} at byte offset {offset} (line {line}): YAML text holds "
                          "no control characters")
    return text


class YamlRefused(yaml.MarkedYAMLError):
    """Something PyYAML's safe loader would take that a file EdgeFarm reads must not hold."""


def _tag_as_written(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses tags and keys given twice."""

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, ScalarEvent | SequenceStartEvent | MappingStartEvent) and event.tag is not None:
            raise YamlRefused(problem=f"the YAML tag {_tag_as_written(event.tag)!r} is not accepted: "
                                      "EdgeFarm's files are plain data, without tags", problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` merges, it is no key
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the safe loader refuses it itself
            if first is not None:
                written = key_node.value if isinstance(key_node, ScalarNode) else key
                raise YamlRefused(problem=f"the key {written!r} is given twice in one mapping (first at line {first + 1}); "
                                          "give each key once", problem_mark=key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _kind_of(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, ScalarNode):
        return "an empty document" if node.value in ("", "~", "null", "Null", "NULL") else f"the single value {node.value!r}"
    return "a mapping"


def load_yaml(path: Path, expected: str = "a YAML mapping", named_by: str = "") -> dict[Any, Any]:
    """The one YAML mapping ``path`` holds; ``expected`` says what it must be, for the messages
    about a file that is empty or holds something else (e.g. "a spec is a YAML mapping ...")."""
    text = read_text(path, named_by)
    loader = _Loader(text)
    try:
        loader.get_event()  # the stream's start
        if loader.check_event(StreamEndEvent):
            raise ConfigError(f"{path}: the file is empty (or comments only): {expected}")
        node = loader.compose_document()
        if not loader.check_event(StreamEndEvent):
            mark = loader.peek_event().start_mark
            raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: a second YAML document starts here: "
                              "the file must hold one document (no '---' between two)")
        if not isinstance(node, MappingNode):
            mark = node.start_mark
            raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: {expected}; the file holds {_kind_of(node)}")
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = exc.problem or exc.context or "cannot be parsed"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        prefix = "" if isinstance(exc, YamlRefused) else "not valid YAML: "
        raise ConfigError(" ".join(f"{path}{at}: {prefix}{what}{context}".split())) from None
    except yaml.YAMLError as exc:
        raise ConfigError(" ".join(f"{path}: not valid YAML: {exc}".split())) from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply to be a file people write") from None
    finally:
        loader.dispose()
    return data
