"""Every admin list and console page renders in a bounded number of queries, however large the fleet.

The data set comes from `seed_scale_data` (the same command the console
benchmark uses at full size); with 60 workers, 150 keys and 600 usage rows a
page that queries once per row would blow far past these bounds.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from benchmarks.console_pages import PAGES

pytestmark = pytest.mark.django_db
MAX_QUERIES = 20


@pytest.fixture
def staff() -> Client:
    call_command("seed_scale_data", workers=60, keys=150, usage=600, days=3, verbosity=0)
    user = get_user_model().objects.create_superuser("root", password="pw-123456789")
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("page", PAGES)
def test_the_page_renders_in_a_bounded_number_of_queries(page, staff, django_assert_max_num_queries) -> None:
    with django_assert_max_num_queries(MAX_QUERIES):
        response = staff.get(page)
    assert response.status_code == 200


def test_the_seed_command_refuses_to_run_twice(staff) -> None:
    with pytest.raises(Exception, match="already holds"):
        call_command("seed_scale_data", workers=1, keys=1, usage=1, verbosity=0)
