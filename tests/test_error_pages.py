"""The error pages are the site's own (issue 12 §5): inside the layout, with the navigation when signed in."""

import pytest
from django.test import Client, RequestFactory
from django.views.defaults import server_error

pytestmark = pytest.mark.django_db


def test_not_found_is_inside_the_layout_with_the_navigation(cast):
    client = Client()
    client.force_login(cast.bob)
    response = client.get("/no/such/page/")
    page = response.content.decode()
    assert response.status_code == 404
    assert "Page not found" in page and 'class="topbar"' in page and "Sign out" in page and "img/favicon.svg" in page


def test_an_expired_form_says_so_and_changes_nothing(cast):
    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.bob)
    response = client.post("/accounts/preferences/", {"full_name": "Changed"})
    assert response.status_code == 403 and "The form expired" in response.content.decode()
    cast.bob.refresh_from_db()
    assert cast.bob.full_name != "Changed"


def test_server_error_page_renders_without_a_request_context():
    response = server_error(RequestFactory().get("/"))
    page = response.content.decode()
    assert response.status_code == 500 and "Something went wrong" in page and 'class="topbar"' in page
    assert "Sign out" not in page


def test_the_favicon_is_served_from_static_files():
    from django.contrib.staticfiles import finders

    assert finders.find("img/favicon.svg")
