"""Matching a request's path and method to a route of the table: longest prefix wins."""

from __future__ import annotations

from dataclasses import dataclass

from ecosistema.gateway.config import RouteConfig


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route for a request, or why there is none (404, or 405 with the allowed methods)."""

    route: RouteConfig | None
    allowed: frozenset[str] = frozenset()


def _covers(prefix: str, path: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix) or path == prefix[:-1]
    return path == prefix or path.startswith(prefix + "/")


class Router:
    """The route table, ordered so that the most specific prefix is tried first."""

    def __init__(self, routes: list[RouteConfig]) -> None:
        self._routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        # (route, path equal to this, or starting with this, methods or None) for ``route_for``.
        self._table = [
            (
                route,
                route.prefix[:-1] if route.prefix.endswith("/") else route.prefix,
                route.prefix if route.prefix.endswith("/") else route.prefix + "/",
                route.methods,
            )
            for route in self._routes
        ]

    @property
    def routes(self) -> list[RouteConfig]:
        """The routes, most specific prefix first."""
        return self._routes

    def route_for(self, method: str, path: str) -> RouteConfig | None:
        """``match(method, path).route``, without building the reasons for a miss."""
        for route, exact, under, methods in self._table:
            if (path == exact or path.startswith(under)) and (
                methods is None or method in methods or (method == "HEAD" and "GET" in methods)
            ):
                return route
        return None

    def owner(self, path: str) -> RouteConfig | None:
        """The most specific route covering ``path`` when every route covering it sends to the
        same service, whatever the method; else None."""
        found: RouteConfig | None = None
        for route in self._routes:
            if _covers(route.prefix, path):
                if found is None:
                    found = route
                elif route.service != found.service:
                    return None
        return found

    def match(self, method: str, path: str) -> RouteMatch:
        """The route serving ``method`` on ``path``; HEAD is served by routes that allow GET."""
        allowed: set[str] = set()
        for route in self._routes:
            if not _covers(route.prefix, path):
                continue
            methods = route.methods
            if methods is None or method in methods or (method == "HEAD" and "GET" in methods):
                return RouteMatch(route)
            allowed |= methods
            if "GET" in methods:
                allowed.add("HEAD")
        return RouteMatch(None, frozenset(allowed))
