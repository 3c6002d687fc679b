"""The dashboard (`GET /ui`) in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by selenium; `scripts/ensure-chromium.sh` installs them): three
real node processes on 127.0.0.1, the leader killed with SIGKILL and restarted, and the page
read through its `data-node-id` / `data-role` attributes. Screenshots of each state go to
`artifacts/dashboard/` (git-ignored)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster_harness import Cluster, http, running, wait_for

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "artifacts" / "dashboard"
PAGE_WAIT_S = 10.0
"""How long the page may take to show a change: a failover (about a second), a poll (0.5 s)."""

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium or chromedriver missing (scripts/ensure-chromium.sh installs them as root)",
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(Cluster(tmp_path, 3))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def cards(driver: object) -> dict[int, str]:
    """node id -> data-role, as the page shows them."""
    elements = driver.find_elements(By.CSS_SELECTOR, "#nodes [data-node-id]")  # type: ignore[attr-defined]
    return {int(e.get_attribute("data-node-id")): e.get_attribute("data-role") for e in elements}


def screenshot(driver: object, name: str) -> None:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS_DIR / f"{name}.png"))  # type: ignore[attr-defined]


def kill_the_leader_and_see_the_failover(cluster: Cluster, driver: object, leader: int) -> int:
    """SIGKILL `leader`, wait until the page shows it down, one survivor leading and the
    failover on the timeline (which only events draw); the new leader."""
    cluster.kill(leader)
    survivors = [node_id for node_id in (1, 2, 3) if node_id != leader]

    def failover_shown() -> int | None:
        shown = cards(driver)
        leaders = [node_id for node_id, role in shown.items() if role == "leader"]
        if shown.get(leader) != "down" or len(leaders) != 1 or leaders[0] not in survivors:
            return None
        entry = driver.find_elements(  # type: ignore[attr-defined]
            By.CSS_SELECTOR,
            f'#timeline li.failover[data-leader-id="{leaders[0]}"]'
            f'[data-previous-leader-id="{leader}"]',
        )
        return leaders[0] if entry else None

    new_leader = wait_for(failover_shown, PAGE_WAIT_S, "a new leader, the old one down, a failover")
    assert new_leader == cluster.leader(among=survivors)
    failover = driver.find_element(  # type: ignore[attr-defined]
        By.CSS_SELECTOR, f'#timeline li.failover[data-leader-id="{new_leader}"]'
    )
    assert int(failover.get_attribute("data-unavailable-ms")) > 0
    assert "ms" in failover.text
    return new_leader


def test_the_dashboard_follows_a_failover_and_the_return_of_the_old_leader(
    cluster: Cluster, browser: object
) -> None:
    driver = browser
    page = http("GET", cluster.url(1) + "/ui")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    # One document: nothing loaded from elsewhere, and the browser is told to load nothing.
    assert b"<script src" not in page.body and b"<link" not in page.body
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    leader = cluster.leader()
    serving = 1 + leader % 3  # the page comes from a follower, which outlives the failover
    driver.get(cluster.url(serving) + "/ui")  # type: ignore[attr-defined]

    def leader_shown() -> dict[int, str] | None:
        shown = cards(driver)
        return shown if shown.get(leader) == "leader" and len(shown) == 3 else None

    shown = wait_for(leader_shown, PAGE_WAIT_S, "the page to show the leader")
    assert sorted(role for node_id, role in shown.items() if node_id != leader) == [
        "follower",
        "follower",
    ]
    screenshot(driver, "1-leader")

    new_leader = kill_the_leader_and_see_the_failover(cluster, driver, leader)
    screenshot(driver, "2-failover")

    cluster.start(leader)

    def returned() -> bool:
        shown = cards(driver)
        return shown.get(leader) == "follower" and shown.get(new_leader) == "leader"

    wait_for(returned, PAGE_WAIT_S * 2, "the old leader back as a follower")
    screenshot(driver, "3-returned")
    # No auth: no sign-in form.
    assert not driver.find_element(By.ID, "signin").is_displayed()  # type: ignore[attr-defined]


def test_the_dashboard_fits_a_phone_and_works_from_the_keyboard(
    cluster: Cluster, browser: object
) -> None:
    driver = browser
    driver.set_window_size(375, 800)  # type: ignore[attr-defined]
    driver.get(cluster.url(1) + "/ui")  # type: ignore[attr-defined]
    wait_for(lambda: len(cards(driver)) == 3, PAGE_WAIT_S, "three node cards")
    scroll_width, client_width = driver.execute_script(  # type: ignore[attr-defined]
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll_width <= client_width, "the page scrolls sideways at 375 px"
    # Tab reaches every node card, each named for screen readers.
    body = driver.find_element(By.TAG_NAME, "body")  # type: ignore[attr-defined]
    from selenium.webdriver.common.keys import Keys

    focused: set[str] = set()
    for _ in range(6):
        body = driver.switch_to.active_element  # type: ignore[attr-defined]
        body.send_keys(Keys.TAB)
        active = driver.switch_to.active_element  # type: ignore[attr-defined]
        if active.get_attribute("data-node-id"):
            focused.add(active.get_attribute("data-node-id"))
            assert active.get_attribute("aria-label").startswith("node ")
    assert focused == {"1", "2", "3"}
    screenshot(driver, "4-phone")


ROOT_PASSWORD = "root-dashboard-pw"
TOKEN_KEY = "kvraft-dashboard-token"  # dashboard.js's sessionStorage key


def enable_auth(cluster: Cluster) -> None:
    """An admin role, user root with it, auth enabled (as `kvraft auth` would, over HTTP),
    and every node applying it."""
    leader = cluster.leader()
    for method, path, body in (
        ("PUT", "/v1/auth/roles/admin", {"admin": True}),
        ("PUT", "/v1/auth/users/root", {"password": ROOT_PASSWORD, "roles": ["admin"]}),
        ("POST", "/v1/auth/enable", None),
    ):
        data = None if body is None else json.dumps(body).encode()
        answer = cluster.request(leader, method, path, data)
        assert answer.status == 200, answer.body
    for node_id in (1, 2, 3):
        wait_for(
            lambda node_id=node_id: cluster.request(node_id, "GET", "/v1/auth/status").json()[
                "enabled"
            ],
            PAGE_WAIT_S,
            f"node {node_id} to apply auth enable",
        )


def storage(driver: object, which: str, key: str) -> str | None:
    value: str | None = driver.execute_script(f"return {which}.getItem(arguments[0])", key)  # type: ignore[attr-defined]
    return value


def shown_text(driver: object, element_id: str) -> str | None:
    """The element's text when it is displayed, else None."""
    element = driver.find_element(By.ID, element_id)  # type: ignore[attr-defined]
    return element.text if element.is_displayed() else None


def test_a_member_refuses_another_origins_preflight_and_lets_a_members_page_read_its_401(
    cluster: Cluster,
) -> None:
    enable_auth(cluster)
    page_origin = cluster.url(1)
    for headers, allowed in (
        ({"Origin": page_origin}, True),
        ({"Origin": "http://evil.example:80"}, False),
    ):
        preflight = cluster.request(
            2,
            "OPTIONS",
            "/v1/events?since=0",
            headers={**headers, "Access-Control-Request-Headers": "authorization"},
        )
        assert preflight.status == 204, preflight.body
        refused = cluster.request(2, "GET", "/v1/events?since=0", headers=headers)
        assert refused.status == 401 and "authentication" in refused.json()["message"]
        if allowed:
            assert preflight.headers["Access-Control-Allow-Origin"] == page_origin
            assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization"
            assert refused.headers["Access-Control-Allow-Origin"] == page_origin
        else:
            assert "Access-Control-Allow-Origin" not in preflight.headers
            assert "Access-Control-Allow-Origin" not in refused.headers


def test_the_dashboard_signs_in_to_a_cluster_with_auth_and_follows_a_failover(
    cluster: Cluster, browser: object
) -> None:
    driver = browser
    enable_auth(cluster)
    leader = cluster.leader()
    serving = 1 + leader % 3  # a follower serves the page: it outlives the failover
    driver.get(cluster.url(serving) + "/ui")  # type: ignore[attr-defined]

    # Status is open: the cards show roles; events are not: the form says why.
    wait_for(
        lambda: len(cards(driver)) == 3 and cards(driver).get(leader) == "leader",
        PAGE_WAIT_S,
        "the cards, with the leader",
    )
    note = wait_for(lambda: shown_text(driver, "signin-note"), PAGE_WAIT_S, "the sign-in form")
    assert "requires authentication" in note
    for field in ("signin-user", "signin-password"):
        assert driver.find_elements(By.CSS_SELECTOR, f'label[for="{field}"]')  # type: ignore[attr-defined]
    # The form fits a phone too.
    driver.set_window_size(375, 800)  # type: ignore[attr-defined]
    scroll_width, client_width = driver.execute_script(  # type: ignore[attr-defined]
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll_width <= client_width, "the sign-in form scrolls sideways at 375 px"
    screenshot(driver, "5-sign-in-phone")
    driver.set_window_size(1280, 900)  # type: ignore[attr-defined]

    from selenium.webdriver.common.keys import Keys

    def sign_in(password: str) -> None:
        # From the keyboard: type, Tab to the password, Enter submits.
        user = driver.find_element(By.ID, "signin-user")  # type: ignore[attr-defined]
        user.clear()
        user.send_keys("root", Keys.TAB)
        active = driver.switch_to.active_element  # type: ignore[attr-defined]
        assert active.get_attribute("id") == "signin-password"
        active.send_keys(password, Keys.ENTER)

    sign_in("not-the-password")
    error = wait_for(lambda: shown_text(driver, "signin-error"), PAGE_WAIT_S, "the error")
    assert "wrong user name or password" in error
    assert storage(driver, "sessionStorage", TOKEN_KEY) is None
    assert driver.find_elements(By.CSS_SELECTOR, "#events li") == []  # type: ignore[attr-defined]
    assert driver.find_elements(By.CSS_SELECTOR, "#timeline li") == []  # type: ignore[attr-defined]
    screenshot(driver, "6-wrong-password")

    sign_in(ROOT_PASSWORD)
    signed_in = wait_for(lambda: shown_text(driver, "signed-in"), PAGE_WAIT_S, "signed in")
    assert "root" in signed_in
    assert shown_text(driver, "signin") is None
    wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#timeline li.election"),  # type: ignore[attr-defined]
        PAGE_WAIT_S,
        "events: the first leader on the timeline",
    )
    token = storage(driver, "sessionStorage", TOKEN_KEY)
    assert token
    assert driver.execute_script("return localStorage.length") == 0  # type: ignore[attr-defined]
    assert token not in driver.current_url  # type: ignore[attr-defined]

    kill_the_leader_and_see_the_failover(cluster, driver, leader)
    screenshot(driver, "7-signed-in-failover")

    driver.find_element(By.ID, "signout").click()  # type: ignore[attr-defined]
    wait_for(lambda: shown_text(driver, "signin"), PAGE_WAIT_S, "the form after signing out")
    assert storage(driver, "sessionStorage", TOKEN_KEY) is None

    # A token the cluster no longer accepts (expired, its user gone): dropped, form again.
    driver.execute_script(  # type: ignore[attr-defined]
        "sessionStorage.setItem(arguments[0], 'not-a-valid-token');"
        "sessionStorage.setItem('kvraft-dashboard-user', 'root')",
        TOKEN_KEY,
    )
    driver.refresh()  # type: ignore[attr-defined]
    error = wait_for(lambda: shown_text(driver, "signin-error"), PAGE_WAIT_S, "signed out")
    assert error.startswith("Signed out:")
    assert storage(driver, "sessionStorage", TOKEN_KEY) is None
    screenshot(driver, "8-token-refused")
