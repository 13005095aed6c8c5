//! An entry's page (`GET /entries/{ns}/{key}`): its images as a parent → child tree, each
//! image's own layers with sizes, and the other entries sharing each layer. A maud template.

use std::collections::{HashMap, HashSet};

use layercache_shared::Digest;
use layercache_shared::api::{EntryDetail, EntryRef, ImageInfo, LayerInfo};
use maud::{Markup, html};

use super::html::{ago, bytes, card, count, page, seg, short};

/// Children of each image (`None`: the roots), in the entry's order.
type Children<'a> = HashMap<Option<Digest>, Vec<&'a ImageInfo>>;

/// The page of entry `d` as seen at `now`.
pub(super) fn render(d: &EntryDetail, now: u64) -> Markup {
    let m = &d.manifest;
    let shares: HashMap<Digest, &[EntryRef]> = d
        .shares
        .iter()
        .map(|s| (s.diff_id, s.shared_with.as_slice()))
        .collect();
    let ids: HashSet<Digest> = m.images.iter().map(|i| i.id).collect();
    let mut children: Children<'_> = HashMap::new();
    for img in &m.images {
        let parent = img.parent.filter(|p| ids.contains(p) && *p != img.id);
        children.entry(parent).or_default().push(img);
    }
    let images = m.images.len().to_string();
    let mut seen = HashSet::new();
    let body = html! {
        p { a href="/" { "← overview" } }
        h1 { (m.namespace) " " span.muted { "/" } " " span.mono { (m.key) } }
        div.grid {
            (card("entry-size", "size", &bytes(m.total_size), &m.total_size.to_string(), "distinct blobs"))
            (card("entry-images", "images", &images, &images, ""))
            (card("entry-hits", "hits", &count(m.hits), &m.hits.to_string(), ""))
            (card("entry-last-used", "last used", &ago(m.last_used, now), &m.last_used.to_string(), ""))
            (card("entry-created", "stored", &ago(m.created, now), &m.created.to_string(), ""))
        }
        h2 { "Images (parent → child)" }
        ul.tree.root { (tree(&children, None, &shares, &mut seen)) }
    };
    page(&format!("{} {} · layercache", m.namespace, m.key), body)
}

/// The images whose parent is `parent`. A run of single children stays at one level (a
/// Dockerfile's chain reads top to bottom instead of indenting once per step); only a parent with
/// several children opens a nested list.
fn tree(
    children: &Children<'_>,
    parent: Option<&ImageInfo>,
    shares: &HashMap<Digest, &[EntryRef]>,
    seen: &mut HashSet<Digest>,
) -> Markup {
    let Some(list) = children.get(&parent.map(|p| p.id)) else {
        return html! {};
    };
    let mut items = Vec::new();
    for first in list {
        let mut cur: &ImageInfo = first;
        let mut cur_parent = parent;
        loop {
            if !seen.insert(cur.id) {
                break; // a cycle in stored parents would otherwise loop forever
            }
            items.push(image_item(cur, cur_parent, shares));
            match children.get(&Some(cur.id)).map(Vec::as_slice) {
                Some([only]) => {
                    cur_parent = Some(cur);
                    cur = only;
                }
                Some(_) => {
                    let nested = tree(children, Some(cur), shares, seen);
                    items.push(html! { li { ul.tree { (nested) } } });
                    break;
                }
                None => break,
            }
        }
    }
    html! { @for item in items { (item) } }
}

/// One image: id, tags, sizes, and the layers it adds over its parent with their sharing.
fn image_item(
    img: &ImageInfo,
    parent: Option<&ImageInfo>,
    shares: &HashMap<Digest, &[EntryRef]>,
) -> Markup {
    let inherited: HashSet<Digest> = parent
        .map(|p| p.layers.iter().map(|l| l.diff_id).collect())
        .unwrap_or_default();
    let own: Vec<(usize, &LayerInfo)> = img
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| !inherited.contains(&l.diff_id))
        .collect();
    let own_bytes: u64 = own.iter().map(|(_, l)| l.size).sum();
    html! {
        li {
            div.panel.image id=(format!("image-{}", img.id.hex()))
                data-parent=(parent.map(|p| p.id.hex()).unwrap_or_default()) {
                @if let Some(p) = parent {
                    div.muted.child-of { "↳ child of " span.mono { (short(&p.id)) } }
                }
                b.mono title=(img.id) { (short(&img.id)) }
                " "
                @for t in &img.tags {
                    span.tag { (t) }
                }
                " "
                span.muted {
                    "· " (img.layers.len()) " layers (" (img.layers.len() - own.len())
                    " from parent) · " (bytes(own_bytes)) " added · config " (bytes(img.config_size))
                }
                @if own.is_empty() {
                    div.muted style="margin-top:6px" { "no new layer (a metadata-only step)" }
                } @else {
                    table style="margin-top:8px" {
                        tr { th { "#" } th { "layer" } th.num { "size" } th { "shared with" } }
                        @for (i, l) in &own {
                            tr {
                                td { (i + 1) }
                                td.mono title=(l.diff_id) { (short(&l.diff_id)) }
                                td.num data-value=(l.size) { (bytes(l.size)) }
                                td {
                                    @match shares.get(&l.diff_id) {
                                        Some(refs) => {
                                            @for (j, r) in refs.iter().enumerate() {
                                                @if j > 0 { ", " }
                                                a href=(format!("/entries/{}/{}", seg(r.namespace.as_str()), seg(r.key.as_str()))) {
                                                    (r.namespace) "/" (r.key)
                                                }
                                            }
                                        }
                                        None => span.muted { "only this entry" },
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use layercache_shared::api::{EntryManifest, LayerInfo};

    use super::*;

    #[test]
    fn entry_page_nests_children_under_parents_and_escapes_tags() {
        let l1 = Digest::of(b"l1");
        let l2 = Digest::of(b"l2");
        let a = ImageInfo {
            id: Digest::of(b"a"),
            parent: None,
            tags: vec!["<b>evil</b>:1".into()],
            config_size: 10,
            layers: vec![LayerInfo {
                diff_id: l1,
                size: 5,
            }],
        };
        let child = ImageInfo {
            id: Digest::of(b"b"),
            parent: Some(a.id),
            tags: vec![],
            config_size: 10,
            layers: vec![
                LayerInfo {
                    diff_id: l1,
                    size: 5,
                },
                LayerInfo {
                    diff_id: l2,
                    size: 7,
                },
            ],
        };
        let d = EntryDetail {
            manifest: EntryManifest {
                namespace: "acme/web".parse().unwrap(),
                key: "k".parse().unwrap(),
                images: vec![child.clone(), a.clone()],
                total_size: 32,
                created: 1,
                last_used: 1,
                hits: 0,
                prefixes: vec![],
            },
            shares: vec![],
        };
        let html = render(&d, 100).into_string();
        assert!(!html.contains("<b>evil"), "tags are escaped");
        assert!(html.contains("&lt;b&gt;evil&lt;/b&gt;:1"));
        let pa = html.find(&format!("image-{}", a.id.hex())).unwrap();
        let pb = html.find(&format!("image-{}", child.id.hex())).unwrap();
        assert!(pa < pb, "the parent comes first");
        assert!(
            html[pa..].contains("child of"),
            "the child names its parent"
        );
        assert!(
            html.contains("(1 from parent)"),
            "inherited layers are summarised"
        );
    }

    /// Regression guard for escaping by construction: a tag or shared entry name holding markup
    /// or an attribute breakout shows as text, never as an element or an attribute.
    #[test]
    fn hostile_tags_and_names_render_as_text() {
        let l1 = Digest::of(b"l1");
        let img = ImageInfo {
            id: Digest::of(b"a"),
            parent: None,
            tags: vec![
                "<script>alert(1)</script>".into(),
                r#""onmouseover="alert(1)"#.into(),
            ],
            config_size: 10,
            layers: vec![LayerInfo {
                diff_id: l1,
                size: 5,
            }],
        };
        let d = EntryDetail {
            manifest: EntryManifest {
                namespace: "acme/web".parse().unwrap(),
                key: "k".parse().unwrap(),
                images: vec![img],
                total_size: 15,
                created: 1,
                last_used: 1,
                hits: 0,
                prefixes: vec![],
            },
            shares: vec![layercache_shared::api::LayerShares {
                diff_id: l1,
                shared_with: vec![EntryRef {
                    namespace: "other".parse().unwrap(),
                    key: "k2".parse().unwrap(),
                }],
            }],
        };
        let html = render(&d, 100).into_string();
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains(r#""onmouseover"#), "{html}");
        assert!(html.contains("&quot;onmouseover=&quot;alert(1)"));
        assert!(html.contains(r#"<a href="/entries/other/k2">other/k2</a>"#));
    }
}
