"""What every API view does with a request before its app takes over."""
from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request


def parse(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    """The request body, validated by `serializer_class`; a 400 naming the first bad field otherwise."""
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
