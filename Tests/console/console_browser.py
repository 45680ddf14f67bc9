"""Drives the gateway's web console in a real headless Chromium (selenium + chromedriver).

Environment: CONSOLE_URL (admin listener base), ADMIN_TOKEN, EPISODE_ID (a collaboration episode
the test created through the public API), EXPECTED_PROMPT (the prompt the policy wrote in it),
PASSTHROUGH_ID, SWAP_PATH (a checkpoint folder in the models directory), SCREENSHOTS (a folder).
Prints one JSON object with what it saw; exits non-zero on the first failed check.
"""
import json
import os
import sys
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

base = os.environ["CONSOLE_URL"].rstrip("/")
token = os.environ["ADMIN_TOKEN"]
episode = os.environ["EPISODE_ID"]
expected_prompt = os.environ["EXPECTED_PROMPT"]
passthrough = os.environ["PASSTHROUGH_ID"]
swap_path = os.environ["SWAP_PATH"]
shots = os.environ["SCREENSHOTS"]
os.makedirs(shots, exist_ok=True)
seen = {}


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        try:
            driver.save_screenshot(os.path.join(shots, "failure.png"))
            print(driver.page_source[:4000], file=sys.stderr)
        finally:
            driver.quit()
        sys.exit(1)


def shot(name):
    # A tall window so the whole page is in the picture.
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 700)")
    driver.set_window_size(1400, min(int(height) + 40, 4000))
    driver.save_screenshot(os.path.join(shots, f"{name}.png"))


options = webdriver.ChromeOptions()
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,900"):
    options.add_argument(arg)
for binary in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
    if os.path.exists(binary):
        options.binary_location = binary
        break
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 20)

# Logged out: any page sends the browser to the log-in form.
driver.get(base + "/console/episodes")
check("/console/login" in driver.current_url, f"not redirected to the log-in page: {driver.current_url}")
seen["redirected_to_login"] = driver.current_url.replace(base, "")
shot("01-login")

# A wrong token is refused, the right one logs in.
driver.find_element(By.ID, "token").send_keys("not-the-token")
driver.find_element(By.ID, "login").click()
check(driver.find_elements(By.ID, "login-error"), "a wrong token was not refused")
driver.find_element(By.ID, "token").send_keys(token)
driver.find_element(By.ID, "login").click()
wait.until(EC.presence_of_element_located((By.ID, "logout")))
check("/console/episodes" in driver.current_url, f"log-in did not return to the page asked for: {driver.current_url}")
cookie = driver.get_cookie("gw_console")
check(cookie is not None and cookie.get("httpOnly") is True, f"session cookie not HttpOnly: {cookie}")
check(cookie.get("sameSite") == "Strict", f"session cookie not SameSite=Strict: {cookie}")
seen["cookie"] = {"httpOnly": cookie["httpOnly"], "sameSite": cookie["sameSite"]}

# The episode list shows the episode the test created; open its trace.
links = driver.find_elements(By.CSS_SELECTOR, f"a.episode-link[data-id='{episode}']")
check(len(links) == 1, f"episode {episode} not in the list")
seen["listed"] = len(driver.find_elements(By.CSS_SELECTOR, "a.episode-link"))
shot("02-episodes")
# Filters: collaboration only, then a text search for a word of the question.
Select(driver.find_element(By.ID, "f-mode")).select_by_value("collaborate")
wait.until(EC.url_contains("mode=collaborate"))
modes = {td.text for td in driver.find_elements(By.CSS_SELECTOR, "#episodes tbody tr td:nth-child(2)")}
check(modes == {"collaborate"}, f"mode filter shows {modes}")
check(driver.find_elements(By.CSS_SELECTOR, f"a.episode-link[data-id='{episode}']"), "episode missing from the filtered list")
check(not driver.find_elements(By.CSS_SELECTOR, f"a.episode-link[data-id='{passthrough}']"), "passthrough episode in the collaborate list")
driver.get(base + "/console/episodes")
question_word = os.environ["QUESTION_WORD"]
driver.find_element(By.ID, "f-q").send_keys(question_word)
driver.find_element(By.ID, "apply").click()
wait.until(EC.url_contains("q="))
check(driver.find_elements(By.CSS_SELECTOR, f"a.episode-link[data-id='{episode}']"), f"text search for {question_word!r} missed the episode")
check(not driver.find_elements(By.CSS_SELECTOR, f"a.episode-link[data-id='{passthrough}']"), "text search matched the passthrough episode")
seen["search_hits"] = len(driver.find_elements(By.CSS_SELECTOR, "a.episode-link"))
driver.find_element(By.CSS_SELECTOR, f"a.episode-link[data-id='{episode}']").click()
wait.until(EC.presence_of_element_located((By.ID, "episode-id")))
check(driver.find_element(By.ID, "episode-id").text == episode, "wrong episode opened")
prompts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "pre.policy-prompt")]
check(any(expected_prompt.strip() in p for p in prompts), f"the policy's prompt is not on the page: {prompts}")
seen["policy_prompts"] = prompts
seen["tokens_coloured"] = len(driver.find_elements(By.CSS_SELECTOR, ".tokens .tok"))
check(seen["tokens_coloured"] > 0, "no coloured tokens")
seen["upstream_answers"] = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "pre.upstream-answer")]
seen["injected"] = len(driver.find_elements(By.CSS_SELECTOR, "pre.injected-text"))
seen["format_score"] = driver.find_element(By.ID, "format-score").text
shot("03-episode-trace")

# Attach feedback from the page.
Select(driver.find_element(By.ID, "fb-kind")).select_by_value("score")
driver.find_element(By.ID, "fb-value").send_keys("0.75")
driver.find_element(By.ID, "fb-submit").click()
wait.until(EC.presence_of_element_located((By.ID, "flash")))
check("Feedback stored" in driver.find_element(By.ID, "flash").text, "no confirmation for the feedback")
rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "tr.feedback-row")]
check(any("0.75" in r and "console" in r for r in rows), f"feedback not shown: {rows}")
seen["reward"] = driver.find_element(By.ID, "reward").text
seen["feedback_rows"] = rows
shot("04-episode-feedback")

# The passthrough episode shows its request and response.
driver.get(base + f"/console/episodes/{passthrough}")
check(driver.find_element(By.ID, "request").text.strip().startswith("{"), "passthrough request missing")
seen["passthrough_response"] = driver.find_element(By.ID, "response").text
shot("05-passthrough")

# A POST without the CSRF token (or with a wrong one) is refused, even with the session cookie.
session = driver.get_cookie("gw_console")["value"]
for body in (b"kind=score&value=0.1", b"kind=score&value=0.1&csrf=0000"):
    req = urllib.request.Request(base + f"/console/episodes/{episode}/feedback", data=body, method="POST",
                                 headers={"Cookie": f"gw_console={session}", "Content-Type": "application/x-www-form-urlencoded"})
    try:
        urllib.request.urlopen(req)
        check(False, "a POST without the CSRF token was accepted")
    except urllib.error.HTTPError as e:
        check(e.code == 403, f"POST without CSRF answered {e.code}")
        seen.setdefault("csrf_refused", []).append(e.code)
# From another origin, even with the right token.
csrf = driver.find_element(By.CSS_SELECTOR, "#feedback-form input[name=csrf]").get_attribute("value")
req = urllib.request.Request(base + f"/console/episodes/{episode}/feedback", data=f"kind=score&value=0.1&csrf={csrf}".encode(), method="POST",
                             headers={"Cookie": f"gw_console={session}", "Content-Type": "application/x-www-form-urlencoded",
                                      "Origin": "http://evil.example"})
try:
    urllib.request.urlopen(req)
    check(False, "a cross-origin POST was accepted")
except urllib.error.HTTPError as e:
    check(e.code == 403, f"cross-origin POST answered {e.code}")
    seen["cross_origin_refused"] = e.code

# Overview and training data render with their charts.
driver.get(base + "/console/overview")
check(len(driver.find_elements(By.CSS_SELECTOR, ".chart svg")) >= 4, "overview charts missing")
seen["overview_requests"] = driver.find_element(By.CSS_SELECTOR, "#card-requests .v").text
shot("06-overview")
driver.get(base + "/console/training")
seen["training_rows"] = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#training tbody tr")]
shot("07-training")

# Swap the serving version from the versions page (confirmation dialog accepted).
driver.get(base + "/console/versions")
before = driver.find_element(By.ID, "serving").text
shot("08-versions")
driver.find_element(By.ID, "swap-path").send_keys(swap_path)
driver.find_element(By.ID, "swap").click()
wait.until(EC.alert_is_present())
seen["confirm"] = driver.switch_to.alert.text
driver.switch_to.alert.accept()
wait.until(EC.presence_of_element_located((By.ID, "flash")))
after = driver.find_element(By.ID, "serving").text
check("Now serving" in driver.find_element(By.ID, "flash").text, driver.find_element(By.ID, "flash").text)
check(after != before, f"serving version unchanged: {before}")
seen["swap"] = {"before": before, "after": after}
shot("09-versions-swapped")

# Log out: the session is gone, pages redirect to the log-in form again.
driver.find_element(By.ID, "logout").click()
wait.until(EC.url_contains("/console/login"))
driver.get(base + "/console/overview")
check("/console/login" in driver.current_url, "still logged in after log-out")
req = urllib.request.Request(base + "/console/overview", headers={"Cookie": f"gw_console={session}"})


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


try:
    urllib.request.build_opener(NoRedirect).open(req)
    check(False, "the old session cookie still works after log-out")
except urllib.error.HTTPError as e:
    check(e.code == 303, f"old session answered {e.code}")
    seen["after_logout"] = e.code
driver.quit()
print(json.dumps(seen))
