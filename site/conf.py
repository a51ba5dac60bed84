"""Sphinx configuration of the course website (built by ``course site``).

The pages themselves are staged by ``course_lib.site``: the stored, executed notebooks
(never re-executed here), the course map, the results and runtime tables, the teaching
guide and the slide decks. Settings that change per deployment come from the
environment, which ``course site`` sets:

``COURSE_REPO_URL``  the public repository (launch and source links), e.g.
                     ``https://github.com/your-org/edges-to-captions``
``COURSE_BRANCH``    its branch (default ``main``)
"""
import os

project = "Edges to Captions"
author = "the Edges to Captions authors"
copyright = "the Edges to Captions authors (code and text: MIT)"

REPO_URL = os.environ.get("COURSE_REPO_URL", "https://github.com/your-org/edges-to-captions")
BRANCH = os.environ.get("COURSE_BRANCH", "main")

extensions = ["myst_nb"]
exclude_patterns = ["_build", "downloads", "**.ipynb_checkpoints"]
master_doc = "index"

# The notebooks are stored executed at the default profile: show them as they are.
nb_execution_mode = "off"
nb_output_stderr = "show"
nb_merge_streams = True
# Prefer the static image over any other representation of a figure.
nb_mime_priority_overrides = [("html", "image/png", 5), ("html", "image/jpeg", 6)]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

# Everything the pages load ships with the site: no CDN, so it reads offline.
mathjax_path = "mathjax/tex-chtml.js"


html_theme = "sphinx_book_theme"
html_title = "Edges to Captions"
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_favicon = "_static/favicon.svg"
html_last_updated_fmt = None
html_show_sourcelink = False
html_use_index = False  # no general index page: the site has no index entries
html_copy_source = False
html_theme_options = {
    "repository_url": REPO_URL,
    "repository_branch": BRANCH,
    "path_to_docs": "",
    "use_download_button": True,
    "use_repository_button": True,
    "use_fullscreen_button": False,
    "launch_buttons": {
        "binderhub_url": "https://mybinder.org",
        "colab_url": "https://colab.research.google.com",
        "notebook_interface": "jupyterlab",
    },
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "home_page_in_toc": True,
    # The theme's defaults would fetch icons and analytics from the web.
    "icon_links": [],
    "navigation_with_keys": False,
}
html_context = {"default_mode": "light"}
