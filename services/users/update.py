"""UpdateUser's field-mask semantics: which fields a PATCH may touch and how they merge."""

from __future__ import annotations

from typing import Final

from google.protobuf import descriptor, field_mask_pb2

from demo.users.v1 import users_pb2

# Set by the server, never by an update.
OUTPUT_ONLY: Final = frozenset({"name", "id", "create_time", "update_time"})


class MaskError(ValueError):
    """An update_mask path that names no field, or one that may not be updated."""


def _field(message: descriptor.Descriptor, segment: str) -> descriptor.FieldDescriptor | None:
    # Proto names are canonical, but a lowerCamelCase path (the JSON spelling) is accepted
    # too, since clients copy field names from the JSON they see.
    return message.fields_by_name.get(segment) or message.fields_by_camelcase_name.get(segment)


def normalize_path(path: str, message: descriptor.Descriptor) -> str:
    """Return the path spelled with proto field names, or raise MaskError."""
    names: list[str] = []
    current: descriptor.Descriptor | None = message
    for segment in path.split("."):
        field = _field(current, segment) if current is not None else None
        if field is None:
            raise MaskError(f"update_mask: unknown field path {path!r}")
        names.append(field.name)
        # Only a singular message field can have sub-paths.
        nested = field.type == descriptor.FieldDescriptor.TYPE_MESSAGE and not field.is_repeated
        current = field.message_type if nested else None
    if names[0] in OUTPUT_ONLY:
        raise MaskError(f"update_mask: field {names[0]!r} is output only")
    return ".".join(names)


def apply_update(
    existing: users_pb2.User, patch: users_pb2.User, mask: field_mask_pb2.FieldMask
) -> users_pb2.User:
    """Return existing with patch applied: the mask's paths, or every mutable field.

    Output-only fields keep their stored values; the caller sets update_time.
    """
    updated = users_pb2.User()
    if not mask.paths:
        updated.CopyFrom(patch)
        _keep_output_only(existing, updated)
        return updated
    paths = [normalize_path(p, users_pb2.User.DESCRIPTOR) for p in mask.paths]
    updated.CopyFrom(existing)
    # Replace rather than merge: a PATCH that names "tags" sets the list, it does not append.
    field_mask_pb2.FieldMask(paths=paths).MergeMessage(
        patch, updated, replace_message_field=True, replace_repeated_field=True
    )
    return updated


def _keep_output_only(existing: users_pb2.User, updated: users_pb2.User) -> None:
    updated.name = existing.name
    updated.id = existing.id
    updated.ClearField("create_time")
    if existing.HasField("create_time"):
        updated.create_time.CopyFrom(existing.create_time)
    updated.ClearField("update_time")
