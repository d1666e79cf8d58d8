"""Per-view loosening of the Content-Security-Policy (clusterra/settings.py), for the few pages that need it."""

from csp.decorators import csp_update

_WASM = {"script-src": ["'wasm-unsafe-eval'"]}


def allow_webassembly(view):
    """Let the page compile WebAssembly (CSP3 'wasm-unsafe-eval'; JavaScript eval() stays refused).

    asciinema-player renders with a terminal emulator compiled to WebAssembly. Applied to the enforced
    policy and to the report-only one (CLUSTERRA_CSP_REPORT_ONLY), whichever is configured.
    """
    return csp_update(_WASM)(csp_update(_WASM, REPORT_ONLY=True)(view))
