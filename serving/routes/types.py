"""Field types shared by request bodies: ids, names and flat feature maps, with their limits."""

from __future__ import annotations

from typing import Annotated

import msgspec

from nba.ids import ID_REGEX, NAME_REGEX

Id = Annotated[str, msgspec.Meta(pattern=ID_REGEX, description="1-128 letters, digits, - _ . :")]
Name = Annotated[str, msgspec.Meta(pattern=NAME_REGEX)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]
TextList = Annotated[list[Text], msgspec.Meta(max_length=100)]
Value = bool | int | float | Text | TextList
FlatMap = Annotated[dict[Key, Value], msgspec.Meta(max_length=256)]
