"""``cifargen serve`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) loads the page, picks a model and a class, draws a
sample grid and checks that the picture arrived; skipped only where chromium is not installed."""

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium chromium-driver)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromium is installed but chromedriver is not: apt-get install chromium-driver"
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_draws_samples_of_the_chosen_class(live_server, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{live_server}/")
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3)
    Select(browser.find_element(By.ID, "model")).select_by_value("cvae")
    wait.until(lambda d: "cvae" in d.find_element(By.ID, "summary").text)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#curves svg"))
    Select(browser.find_element(By.ID, "class")).select_by_visible_text("horse")
    seed = browser.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys("42")
    browser.find_element(By.ID, "draw").click()
    picture = browser.find_element(By.ID, "samples")
    wait.until(lambda d: "class=7" in (picture.get_attribute("data-request") or "")
               and "seed=42" in picture.get_attribute("data-request")
               and d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture) > 0)
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", picture)
    assert size == [8 * 34 + 2, 4 * 34 + 2]  # 32 samples, 8 to a row
    assert browser.find_element(By.ID, "samples-error").text == ""
    between = browser.find_element(By.ID, "between")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", between) == 32)
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width >= 800
