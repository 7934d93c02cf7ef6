// The sign-in page: keep the session's token in this origin's own storage (which no other
// port or site can read), then open the page the link named, from this origin, so the
// browser sends the session's cookie with it.
const meta = (name) => document.querySelector(`meta[name="${name}"]`).getAttribute("content");
localStorage.setItem("tuneloop-token", meta("tuneloop-token"));
location.replace(meta("tuneloop-next"));
