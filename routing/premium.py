"""Premium models through their providers' official SDKs: the router's other half."""
from __future__ import annotations
