"""Corral: virtual machines with the ergonomics of containers, a REST API in front of libvirt."""

__version__ = "0.1.0"
