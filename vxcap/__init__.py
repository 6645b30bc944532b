"""vxcap: AWS VPC Traffic Mirroring (VXLAN) to Resurface API calls."""

__version__ = "0.1.0"
