"""The web app: `app` wires (create_app, wsgi_app), `views` holds the pages as a Blueprint,
`forms` parses what the forms send."""

from digest.web.app import InsecureSecretKey, check_secret_key, create_app, wsgi_app

__all__ = ["InsecureSecretKey", "check_secret_key", "create_app", "wsgi_app"]
