/** An app module for the CLI tests that exports no Nenc app. */
export const appId = "none";
