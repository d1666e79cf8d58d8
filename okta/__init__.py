"""Okta: reconciliation against the Groups API (okta/reconcile.py) and Event Hooks for instant removal (okta/hooks.py)."""
