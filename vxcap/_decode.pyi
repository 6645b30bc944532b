"""Type stubs for the native decoder (src_c/decode.pyx); behaviour is specified by vxcap.decode_py."""
from vxcap._pcapfile import FrameBatch
from vxcap.decode_py import VniFilter

# (key, dir, seq, ack, flags, ts_ns, payload, missing, tunnel_src)
Segment = tuple[bytes, int, int, int, int, int, bytes, int, bytes]

class Decoder:
    pure: bool
    vxlan_port: int
    geneve_port: int
    encap: str
    vnis: VniFilter
    ports: frozenset[int]
    max_depth: int
    def __init__(
        self,
        vxlan_port: int = ...,
        geneve_port: int = ...,
        encap: str = ...,
        vnis: VniFilter = ...,
        ports: frozenset[int] = ...,
        max_depth: int = ...,
    ) -> None: ...
    def decode(self, batch: FrameBatch) -> list[Segment]: ...
    def counters(self) -> dict[str, int]: ...
    def vni_stats(self) -> dict[int, tuple[int, int]]: ...
