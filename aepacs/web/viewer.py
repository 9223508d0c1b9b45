"""The OHIF viewer, installed once from the npm registry and served by ``aepacs serve`` at ``/viewer/``.

:func:`install` runs ``npm pack @ohif/app@VERSION`` (the built ``dist/`` of
the OHIF project's own release), checks the tarball against the registry's
SHA-512 integrity, and unpacks ``dist/`` into the site's viewer directory
atomically, its webpack public path made to follow ``window.PUBLIC_URL``.
Nothing is fetched at run time: :func:`routes` serves the unpacked files,
with ``index.html`` rewritten for the ``/viewer/`` prefix and an
``app-config.js`` generated to point at this server's own DICOMweb root.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from aepacs.errors import AepacsError

__all__ = ["COOKIE", "OHIF_VERSION", "PREFIX", "ViewerError", "app_config", "index_html", "install", "routes"]

#: the OHIF release installed (issue 17 names 3.13.x)
OHIF_VERSION = "3.13.2"
PREFIX = "/viewer"


class ViewerError(AepacsError):
    """The viewer could not be installed (npm missing or failing, a tarball that does not verify)."""


def _verify(tgz: Path, integrity: str) -> None:
    algo, _, want = integrity.partition("-")
    if algo != "sha512":
        raise ViewerError(f"unexpected integrity {algo!r} for {tgz.name}")
    got = base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if got != want:
        raise ViewerError(f"{tgz.name} does not match the registry's SHA-512: not installed")


def _unpack(tgz: Path, dest: Path) -> int:
    """``package/dist/*`` of `tgz` into `dest`; every path confined to `dest`. Returns the file count."""
    count = 0
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            if path.parts[:2] != ("package", "dist") or not member.isfile():
                continue
            rel = PurePosixPath(*path.parts[2:])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise ViewerError(f"refusing a path outside the viewer directory: {member.name}")
            out = dest.joinpath(*rel.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with src, out.open("wb") as f:
                shutil.copyfileobj(src, f)
            count += 1
    return count


#: webpack's public path as OHIF's build sets it, and what it becomes: where the page says it is served
_PUBLIC_PATH = ('__webpack_require__.p = "/";', '__webpack_require__.p = (window.PUBLIC_URL || "/");')


def _public_path(dist: Path) -> None:
    """Make the bundle load its chunks from ``window.PUBLIC_URL`` (set by :func:`index_html`), not ``/``."""
    (bundle,) = dist.glob("app.bundle.*.js")
    text = bundle.read_text("utf-8")
    if text.count(_PUBLIC_PATH[0]) != 1:
        raise ViewerError(f"{bundle.name}: webpack's public path is not set where this installer expects")
    bundle.write_text(text.replace(*_PUBLIC_PATH), "utf-8")


def install(dest: Path, version: str = OHIF_VERSION, *, npm: str = "npm") -> Path:
    """Install OHIF `version` into `dest` (replacing what is there only once the new copy is complete).

    Raises
    ------
    ViewerError
        npm is missing or fails, or the tarball does not match its integrity.
    """
    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".viewer-") as tmp:
        try:
            out = subprocess.run([npm, "pack", f"@ohif/app@{version}", "--json", "--pack-destination", tmp],
                                 capture_output=True, text=True, check=True, timeout=1800, cwd=tmp)
        except FileNotFoundError:
            raise ViewerError("npm is not installed: the viewer is installed with npm pack") from None
        except subprocess.CalledProcessError as exc:
            raise ViewerError(f"npm pack @ohif/app@{version} failed: {exc.stderr.strip()[-500:]}") from None
        (info,) = json.loads(out.stdout)
        tgz = Path(tmp) / info["filename"]
        _verify(tgz, info["integrity"])
        staged = Path(tmp) / "dist"
        if _unpack(tgz, staged) == 0 or not (staged / "index.html").is_file():
            raise ViewerError(f"@ohif/app@{version} has no dist/index.html")
        _public_path(staged)
        (staged / "AEPACS-VIEWER").write_text(json.dumps({"package": "@ohif/app", "version": version,
                                                          "integrity": info["integrity"]}) + "\n")
        old = Path(tmp) / "old"
        if dest.exists():
            dest.rename(old)
        staged.rename(dest)
    return dest


def index_html(original: str, prefix: str = PREFIX) -> str:
    """OHIF's ``index.html`` (built for ``/``) for serving under `prefix`."""
    return (original.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{prefix}/"')
            .replace('src="/', f'src="{prefix}/').replace('href="/', f'href="{prefix}/'))


def app_config(dicomweb_root: str, prefix: str = PREFIX) -> str:
    """The viewer's ``app-config.js``: one DICOMweb data source, this server's."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "aepacs",
        "configuration": {
            "friendlyName": "aepacs", "name": "aepacs",
            "wadoUriRoot": dicomweb_root, "qidoRoot": dicomweb_root, "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": True, "supportsReject": False, "supportsFuzzyMatching": False,
            "supportsWildcard": True, "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "staticWado": False, "singlepart": "bulkdata,video",
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {"routerBasename": prefix, "extensions": [], "modes": [], "customizationService": {},
              "investigationalUseDialog": {"option": "never"},
              "showStudyList": True, "maxNumberOfWebWorkers": 2, "showWarningMessageForCrossOrigin": False,
              "showCPUFallbackMessage": True, "showLoadingIndicator": True, "strictZSpacingForVolumeViewport": True,
              "defaultDataSourceName": "aepacs", "dataSources": [source]}
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


#: the cookie a browser session of the viewer carries its token in (GET requests only: read-only)
COOKIE = "aepacs_token"

_LOGIN = """<!doctype html><html><head><meta charset="utf-8"><title>aepacs viewer</title></head>
<body style="font-family:sans-serif;margin:4em"><h1>aepacs</h1>
<form method="post" action="{prefix}/login"><label>Access token
<input type="password" name="token" id="token" autofocus size="50"></label>
<button type="submit" id="login">Open the viewer</button></form><p>{message}</p></body></html>"""


def routes(directory: Path, root: Callable[[Request], str], *, secure: bool) -> list[BaseRoute]:
    """The viewer's routes: ``app-config.js`` (generated), its files, ``login``, and ``index.html``
    for every other path (the viewer's own routes)."""
    base = directory.resolve()
    index = index_html((base / "index.html").read_text("utf-8"))

    def config(request: Request) -> Response:
        return Response(app_config(root(request)), media_type="application/javascript",
                        headers={"Cache-Control": "no-store"})

    def page(request: Request) -> Response:
        rel = request.path_params.get("path", "")
        if rel:
            candidate = (base / rel).resolve()
            if candidate.is_relative_to(base) and candidate.is_file():
                return FileResponse(candidate)
            if "." in rel.rsplit("/", 1)[-1]:  # a file that is not there; a viewer route has no suffix
                return Response(status_code=404)
        return HTMLResponse(index)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse(_LOGIN.format(prefix=PREFIX, message=""))
        form = (await request.body()).decode("ascii", "replace")
        token = parse_qs(form).get("token", [""])[0].strip()
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")
        return response

    def asset(request: Request) -> Response:
        # OHIF's web workers, styles and manifest name some files from "/" whatever the page's prefix
        candidate = (base / request.path_params["path"]).resolve()
        if candidate.is_relative_to(base) and candidate.is_file():
            return FileResponse(candidate)
        return Response(status_code=404)

    return [Route(f"{PREFIX}/app-config.js", config), Route(f"{PREFIX}/login", login, methods=["GET", "POST"]),
            Route(PREFIX, lambda request: RedirectResponse(f"{PREFIX}/")),
            Route(f"{PREFIX}/", page), Route(f"{PREFIX}/{{path:path}}", page),
            Route("/{path:path}", asset)]
