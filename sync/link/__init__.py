"""A link: one peer pulled into the local region (`PeerLink`), built from the region's
config (`LinkSettings.from_config`) for the daemon and every command alike."""

from sync.link.peerlink import PeerLink
from sync.link.settings import LinkSettings

__all__ = ["LinkSettings", "PeerLink"]
