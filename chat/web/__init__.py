"""The web client: the page, script and style the web port serves, shipped as static files in this package.

Nothing here runs in Python; chat.server.web reads `static/` and serves it with ETags and a strict
Content-Security-Policy, so the page needs no build step and no third-party origin.
"""
