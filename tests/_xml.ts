/**
 * A strict parser of the XML nenc writes (SVG): elements, attributes, text, comments, an XML
 * declaration, the five named entities and character references. Anything else — a mismatched or
 * unclosed tag, an unquoted, duplicate or `<`-holding attribute, a raw `<` or a bare `&` in text,
 * a DOCTYPE or CDATA section, text outside the root — throws a `SyntaxError` naming the offset.
 * The tests parse what the renderers produce with it, and query the tree.
 */

/** An element: its name, attributes (decoded) and children (elements and decoded text). */
export interface XmlElement {
  readonly name: string;
  readonly attributes: Readonly<Record<string, string>>;
  readonly children: readonly (XmlElement | string)[];
}

const NAME = /[A-Za-z_:][-A-Za-z0-9_:.]*/y;
const ENTITIES: Readonly<Record<string, string>> = {
  amp: "&",
  lt: "<",
  gt: ">",
  quot: '"',
  apos: "'",
};

/** Parses a document; throws a `SyntaxError` at the first thing that is not well-formed XML. */
export function parseXml(source: string): XmlElement {
  let at = 0;
  const fail = (what: string): never => {
    throw new SyntaxError(`Cannot parse the XML at offset ${at}: ${what}`);
  };
  const name = (): string => {
    NAME.lastIndex = at;
    const match = NAME.exec(source);
    if (match === null) fail("expected a name");
    at += match![0].length;
    return match![0];
  };
  const space = (): void => {
    while (/\s/.test(source[at] ?? "")) at++;
  };
  const decode = (raw: string, start: number): string =>
    raw.replace(/&([^;&]*);|&/g, (whole, entity: string | undefined) => {
      if (entity === undefined) {
        at = start;
        return fail("a bare & (not an entity)");
      }
      if (entity in ENTITIES) return ENTITIES[entity]!;
      const code = /^#x[0-9a-fA-F]+$/.test(entity)
        ? parseInt(entity.slice(2), 16)
        : /^#[0-9]+$/.test(entity)
        ? parseInt(entity.slice(1), 10)
        : undefined;
      if (code === undefined) {
        at = start;
        return fail(`an unknown entity ${whole}`);
      }
      return String.fromCodePoint(code);
    });
  const misc = (): void => {
    for (;;) {
      space();
      if (source.startsWith("<!--", at)) {
        const end = source.indexOf("-->", at);
        if (end < 0) fail("an unclosed comment");
        at = end + 3;
      } else if (source.startsWith("<?", at)) {
        const end = source.indexOf("?>", at);
        if (end < 0) fail("an unclosed declaration");
        at = end + 2;
      } else return;
    }
  };
  const element = (): XmlElement => {
    if (source[at] !== "<") fail("expected <");
    at++;
    const tag = name();
    const attributes: Record<string, string> = {};
    for (;;) {
      const before = at;
      space();
      if (source.startsWith("/>", at)) {
        at += 2;
        return { name: tag, attributes, children: [] };
      }
      if (source[at] === ">") {
        at++;
        break;
      }
      if (at === before) fail("expected a space before an attribute");
      const attribute = name();
      space();
      if (source[at] !== "=") fail(`expected = after ${attribute}`);
      at++;
      space();
      const quote = source[at];
      if (quote !== '"' && quote !== "'") fail(`an unquoted value of ${attribute}`);
      const end = source.indexOf(quote!, at + 1);
      if (end < 0) fail(`an unclosed value of ${attribute}`);
      const raw = source.slice(at + 1, end);
      if (raw.includes("<")) fail(`a < in the value of ${attribute}`);
      if (attribute in attributes) fail(`a second ${attribute} attribute`);
      attributes[attribute] = decode(raw, at + 1);
      at = end + 1;
    }
    const children: (XmlElement | string)[] = [];
    for (;;) {
      if (at >= source.length) fail(`an unclosed <${tag}>`);
      if (source.startsWith("</", at)) {
        at += 2;
        if (name() !== tag) fail(`a closing tag that is not </${tag}>`);
        space();
        if (source[at] !== ">") fail("expected >");
        at++;
        return { name: tag, attributes, children };
      }
      if (source.startsWith("<!--", at)) {
        const end = source.indexOf("-->", at);
        if (end < 0) fail("an unclosed comment");
        at = end + 3;
      } else if (source.startsWith("<!", at) || source.startsWith("<?", at)) {
        fail("a DOCTYPE, CDATA section or processing instruction inside an element");
      } else if (source[at] === "<") {
        children.push(element());
      } else {
        const end = source.indexOf("<", at);
        const raw = source.slice(at, end < 0 ? source.length : end);
        if (raw.includes("]]>")) fail("]]> in text");
        children.push(decode(raw, at));
        at += raw.length;
      }
    }
  };
  misc();
  const root = element();
  misc();
  if (at !== source.length) fail("content after the root element");
  return root;
}

/** Every element under `root` (itself included) that `predicate` accepts, in document order. */
export function findAll(
  root: XmlElement,
  predicate: (element: XmlElement) => boolean,
): XmlElement[] {
  const found: XmlElement[] = [];
  const visit = (element: XmlElement): void => {
    if (predicate(element)) found.push(element);
    for (const child of element.children) if (typeof child !== "string") visit(child);
  };
  visit(root);
  return found;
}

/** The text of an element and its descendants, joined. */
export function textOf(element: XmlElement): string {
  return element.children.map((child) => typeof child === "string" ? child : textOf(child))
    .join("");
}
