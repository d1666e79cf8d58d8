"""The tenant admin console, /t/<tenant>/admin/: people, clusters, access rules, identity provider,
mapping preview and activity. Tenant admins only (Django's admin stays for platform operators).

Every view starts with `console_view`, which resolves the tenant the signed-in person administers
(a 404 for anyone else, whatever the URL names); objects are looked up inside that tenant only.
Changes are POSTs through the write paths (accounts/lifecycle.py, accounts/services.py,
clusters/services.py, terminal/actions.py, accounts/throttle.py), each of which writes its audit event.
"""
