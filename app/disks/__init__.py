"""Where disks come from: OCI image references and registries, and checks of untrusted disk files.

Standalone like app.virt: it imports nothing else of Corral, so the worker and the API can both use it.
"""
