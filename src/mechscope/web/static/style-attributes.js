// plotly (through d3) sets some style attributes with setAttribute("style", text), which the
// app's Content-Security-Policy refuses (no inline styles). Assigning the same text through the
// CSSOM (element.style.cssText) is allowed and has the same effect, so route it there. Loaded
// before plotly, on pages that draw figures only.
"use strict";
(function () {
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (typeof name === "string" && name.toLowerCase() === "style") {
      this.style.cssText = String(value);
      return;
    }
    return setAttribute.call(this, name, value);
  };
})();
