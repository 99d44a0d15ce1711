"""The web app: ``medsam3 serve`` (:mod:`medsam3.app.cli`), built in :mod:`medsam3.app.ui`.

Gradio is imported only when the app is built, so the rest of medsam3 works without it.
"""

from medsam3.app.ui import AppSettings, build_app

__all__ = ["AppSettings", "build_app"]
